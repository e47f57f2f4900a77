//! Prints the rseq environment as `key: value` lines.

fn main() {
    println!("{}", rseq_sys::status());
}
