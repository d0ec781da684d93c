//! The incoming direction: records from the transport to the app protocol.
//!
//! Stock's `_do_read__copied` and `_do_read__buffered`, with two changes nobody can
//! observe: decrypted bytes are read into the protocol's own buffer and handed over as
//! one `bytes` of the right size (stock reads into a fresh 256 KiB `bytes` per record,
//! then joins them), and the last read, which can only raise `SSLWantReadError`, is
//! skipped when nothing is left to read (see [`SslCalls::may_read`]).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PySlice};

use super::bio::{is_again, SslCalls};
use super::protocol::SslProtocolCore;

/// How a read loop ended.
pub(crate) struct ReadOutcome<'py> {
    /// What to deliver to the app protocol, if anything arrived.
    pub(crate) data: Option<Bound<'py, PyAny>>,
    /// The peer's close_notify was read.
    pub(crate) eof: bool,
}

/// What one read attempt gave.
enum Step {
    /// This many bytes (0: the peer's close_notify).
    Got(usize),
    /// Nothing now: more input is needed.
    Again,
}

/// `sslobj.read(n, buffer)`, with "want more input" (raised, or known beforehand) as
/// [`Step::Again`].
fn read_step(
    py: Python<'_>,
    calls: &SslCalls,
    n: usize,
    buffer: &Bound<'_, PyAny>,
) -> PyResult<Step> {
    if !calls.may_read(py)? {
        return Ok(Step::Again);
    }
    match calls.read_into(py, n, buffer) {
        Ok(count) => Ok(Step::Got(count)),
        Err(err) if is_again(py, &err)? => Ok(Step::Again),
        Err(err) => Err(err),
    }
}

/// `view[start:]`.
fn tail<'py>(view: &Bound<'py, PyAny>, start: usize) -> PyResult<Bound<'py, PyAny>> {
    let py = view.py();
    view.get_item(PySlice::new(py, start as isize, isize::MAX, 1))
}

/// The decrypted bytes available now, read into `buffer` (the protocol's own; `view` a
/// memoryview of it), as one `bytes`. `max_size` is what stock's reads ask for (used for
/// an `SSLObject` subclass, read as stock reads it).
pub(crate) fn read_copied<'py>(
    py: Python<'py>,
    calls: &SslCalls,
    buffer: &Bound<'py, PyByteArray>,
    view: &Bound<'py, PyAny>,
    max_size: usize,
) -> PyResult<ReadOutcome<'py>> {
    if !calls.direct {
        return read_copied_as_stock(py, calls, max_size);
    }
    let capacity = buffer.len();
    // Records past the first `capacity` bytes (a burst larger than the buffer).
    let mut spilled: Vec<u8> = Vec::new();
    let mut filled = 0usize;
    let mut eof = false;
    loop {
        if filled == capacity {
            spilled.extend_from_slice(prefix(buffer, filled));
            filled = 0;
        }
        let target = if filled == 0 {
            view.clone()
        } else {
            tail(view, filled)?
        };
        match read_step(py, calls, capacity - filled, &target)? {
            Step::Got(0) => {
                eof = true;
                break;
            }
            Step::Got(n) => filled += n,
            Step::Again => break,
        }
    }
    let data = if spilled.is_empty() {
        (filled > 0).then(|| PyBytes::new(py, prefix(buffer, filled)))
    } else {
        spilled.extend_from_slice(prefix(buffer, filled));
        Some(PyBytes::new(py, &spilled))
    };
    Ok(ReadOutcome {
        data: data.map(Bound::into_any),
        eof,
    })
}

/// The first `len` bytes of `buffer`, for copying out at once.
fn prefix<'a>(buffer: &'a Bound<'_, PyByteArray>, len: usize) -> &'a [u8] {
    // SAFETY: callers copy the slice before any Python code runs (the only way the
    // bytearray could be resized or written meanwhile); the protocol never resizes it,
    // and `len` never exceeds what a read put into it.
    let bytes = unsafe { buffer.as_bytes() };
    &bytes[..len.min(bytes.len())]
}

/// Stock's loop for an `SSLObject` subclass: `read(max_size)` until it returns nothing
/// or wants more input, the chunks joined.
fn read_copied_as_stock<'py>(
    py: Python<'py>,
    calls: &SslCalls,
    max_size: usize,
) -> PyResult<ReadOutcome<'py>> {
    let mut chunks: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut eof = false;
    loop {
        match calls.read(py, max_size) {
            Ok(chunk) => {
                if !chunk.is_truthy()? {
                    eof = true;
                    break;
                }
                chunks.push(chunk);
            }
            Err(err) if is_again(py, &err)? => break,
            Err(err) => return Err(err),
        }
    }
    let data = match chunks.len() {
        0 => None,
        1 => chunks.pop(),
        _ => Some(
            PyBytes::new(py, b"")
                .call_method1(intern!(py, "join"), (chunks,))?
                .into_any(),
        ),
    };
    Ok(ReadOutcome { data, eof })
}

/// Stock's `_do_read__buffered`: decrypt straight into the app protocol's buffer, as
/// much as it takes. Returns whether the peer's close_notify was read; schedules another
/// read when the buffer was filled completely (more may be waiting).
pub(crate) fn read_buffered(
    slf: &Bound<'_, SslProtocolCore>,
    calls: &SslCalls,
    get_buffer: &Bound<'_, PyAny>,
    buffer_updated: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let py = slf.py();
    let hint = calls.incoming_pending(py)?;
    let buf = get_buffer.call1((hint,))?;
    let wants = buf.len()?;
    let mut offset = 0usize;
    // Stock starts from 1: a read that wanted more input is no EOF.
    let mut last = 1usize;
    if let Step::Got(n) = read_step(py, calls, wants, &buf)? {
        last = n;
        offset = n;
        if n > 0 {
            let mut filled = true;
            while offset < wants {
                match read_step(py, calls, wants - offset, &tail(&buf, offset)?)? {
                    Step::Got(n) if n > 0 => offset += n,
                    Step::Got(n) => {
                        last = n;
                        filled = false;
                        break;
                    }
                    Step::Again => {
                        filled = false;
                        break;
                    }
                }
            }
            if filled {
                SslProtocolCore::schedule_read(slf)?;
            }
        }
    }
    if offset > 0 {
        buffer_updated.call1((offset,))?;
    }
    Ok(last == 0)
}
