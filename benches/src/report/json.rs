//! The machine-readable report: every figure, every sample and the settings, as JSON.

use super::Report;
use std::io::{self, Write};
use std::path::Path;

/// Write `report` to `path` as pretty-printed JSON.
pub fn write_json(report: &Report, path: &Path) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut file, report)?;
    file.write_all(b"\n")?;
    file.flush()
}
