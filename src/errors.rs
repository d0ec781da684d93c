//! Mapping of OS errors to Python exceptions, in one place.
//!
//! PyO3's `From<io::Error>` picks the right `OSError` subclass but loses `errno` and
//! `strerror`, and asyncio code branches on `exc.errno`. Building the exception as
//! `OSError(errno, strerror)` lets CPython choose the subclass (`ConnectionResetError`,
//! `BlockingIOError`, ...) and keeps both attributes, as uvloop's error module does.

use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;

/// Converts an OS error into the Python exception CPython would raise for it.
pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => {
            let strerror = io::Error::from_raw_os_error(errno).to_string();
            // Rust appends " (os error N)"; Python's strerror is the bare message.
            let strerror = match strerror.rfind(" (os error") {
                Some(cut) => strerror[..cut].to_owned(),
                None => strerror,
            };
            PyOSError::new_err((errno, strerror))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}
