//! Builds the hand-written C rseq add that the rseq suite uses as its reference.

fn main() {
    println!("cargo:rerun-if-changed=c/rseq_add.c");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
    {
        cc::Build::new()
            .file("c/rseq_add.c")
            .opt_level(2)
            .compile("percpu_c_rseq_add");
        println!("cargo:rustc-cfg=c_reference");
    }
    println!("cargo::rustc-check-cfg=cfg(c_reference)");
}
