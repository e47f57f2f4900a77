//! Checks shared by the tests that run the benches' binaries and read their JSON.

use serde_json::Value;

/// `value` as a number that is positive and finite (a time, a ratio, a count), or a panic
/// naming `what`.
pub fn positive_finite(value: &Value, what: &str) -> f64 {
    let number = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(
        number.is_finite() && number > 0.0,
        "{what} = {number}, not positive and finite"
    );
    number
}
