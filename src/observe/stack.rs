//! Taking the loop thread's Python stack from another thread.
//!
//! The normal way holds the GIL: [`python_stack`] reads `sys._current_frames()` for the
//! loop thread and walks `f_back`. The loop thread is then stopped at a well-defined
//! point (it released the GIL in `time.sleep` or a blocking `recv`, or handed it over at
//! a switch interval while running bytecode), and only C getters run during the walk,
//! so no bytecode runs and the GIL cannot change hands half-way.
//!
//! When the loop thread keeps the GIL in native code (a long regular-expression match,
//! a C extension's loop), the GIL cannot be had until that call returns. Then
//! [`native_dump`] uses CPython's faulthandler routine where the interpreter exports it
//! (`_Py_DumpTraceback` on 3.11 and 3.12, `PyUnstable_DumpTraceback` on 3.15; 3.13 and
//! 3.14 keep it private): it reads the thread's frames without the GIL, as
//! `faulthandler.dump_traceback_later` does from its own watchdog thread. That is safe
//! enough for the same reason faulthandler's is: the thread is inside a C call that has
//! held the GIL for the whole grace period, so no frame of it is being pushed or popped.

use std::ffi::CStr;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// One frame: file, line (None when unknown) and qualified function name.
type Frame<'py> = Bound<'py, PyTuple>;

/// Whether `frame` is ferroloop's `Loop.run_forever`: the frames under it are the
/// program's way into the loop, not the callback's.
fn is_loop_entry(code: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = code.py();
    let name: String = code.getattr(pyo3::intern!(py, "co_name"))?.extract()?;
    if name != "run_forever" {
        return Ok(false);
    }
    let file: String = code.getattr(pyo3::intern!(py, "co_filename"))?.extract()?;
    Ok(file.ends_with("ferroloop/_loop.py"))
}

/// The Python stack of thread `thread_id`, oldest frame first, above ferroloop's
/// `run_forever` (all of it if the loop was entered another way), as a list of
/// `(filename, lineno, name)`. `None` if the thread runs no Python code.
pub(crate) fn python_stack(py: Python<'_>, thread_id: u64) -> PyResult<Option<Bound<'_, PyList>>> {
    let frames = py
        .import("sys")?
        .call_method0(pyo3::intern!(py, "_current_frames"))?;
    let frames = frames.cast::<PyDict>()?;
    let Some(mut frame) = frames.get_item(thread_id)? else {
        return Ok(None);
    };
    let mut collected: Vec<Frame<'_>> = Vec::new();
    while !frame.is_none() && collected.len() < 200 {
        let code = frame.getattr(pyo3::intern!(py, "f_code"))?;
        if is_loop_entry(&code)? {
            break;
        }
        let name = code
            .getattr(pyo3::intern!(py, "co_qualname"))
            .or_else(|_| code.getattr(pyo3::intern!(py, "co_name")))?;
        let entry = PyTuple::new(
            py,
            [
                code.getattr(pyo3::intern!(py, "co_filename"))?,
                frame.getattr(pyo3::intern!(py, "f_lineno"))?,
                name,
            ],
        )?;
        collected.push(entry);
        frame = frame.getattr(pyo3::intern!(py, "f_back"))?;
    }
    collected.reverse();
    Ok(Some(PyList::new(py, collected)?))
}

/// `void _Py_DumpTraceback(int fd, PyThreadState *tstate)` (3.11, 3.12).
type PrivateDump = unsafe extern "C" fn(libc::c_int, *mut ffi::PyThreadState);
/// `const char *PyUnstable_DumpTraceback(int fd, PyThreadState *tstate)` (3.15).
type UnstableDump =
    unsafe extern "C" fn(libc::c_int, *mut ffi::PyThreadState) -> *const libc::c_char;

/// CPython's faulthandler dump of one thread, where the interpreter exports it.
enum DumpFunction {
    Private(PrivateDump),
    Unstable(UnstableDump),
}

fn lookup(name: &CStr) -> Option<*mut libc::c_void> {
    // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the objects already loaded
    // (the interpreter's executable or libpython), and a missing symbol gives NULL.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!symbol.is_null()).then_some(symbol)
}

fn dump_function() -> Option<&'static DumpFunction> {
    static FUNCTION: OnceLock<Option<DumpFunction>> = OnceLock::new();
    FUNCTION
        .get_or_init(|| {
            if let Some(symbol) = lookup(c"PyUnstable_DumpTraceback") {
                // SAFETY: the symbol is CPython's, with the signature declared in 3.15's
                // cpython/traceback.h.
                return Some(DumpFunction::Unstable(unsafe {
                    std::mem::transmute::<*mut libc::c_void, UnstableDump>(symbol)
                }));
            }
            let symbol = lookup(c"_Py_DumpTraceback")?;
            // SAFETY: the symbol is CPython's, with the signature of 3.11's and 3.12's
            // internal/pycore_traceback.h (exported there, hidden on 3.13 and 3.14).
            Some(DumpFunction::Private(unsafe {
                std::mem::transmute::<*mut libc::c_void, PrivateDump>(symbol)
            }))
        })
        .as_ref()
}

/// Whether [`native_dump`] can work on this interpreter.
pub(crate) fn native_dump_available() -> bool {
    dump_function().is_some()
}

/// faulthandler's text for the thread whose state is `tstate` ("Stack (most recent call
/// first):" and one `File "...", line N in name` line per frame), taken without the GIL.
/// `tstate` must be the state of a thread that is still running Python code (the loop
/// thread, inside `run_forever`).
pub(crate) fn native_dump(tstate: *mut ffi::PyThreadState) -> Option<String> {
    let function = dump_function()?;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return None;
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let fd = writer.as_raw_fd();
    match function {
        // SAFETY: `tstate` is the loop thread's state, which lives while the loop runs
        // (the watchdog is stopped before `run_forever` returns); the routine only reads
        // it and writes to `fd`, a non-blocking pipe, so a full pipe truncates instead of
        // blocking.
        DumpFunction::Private(dump) => unsafe { dump(fd, tstate) },
        DumpFunction::Unstable(dump) => {
            // SAFETY: as above; the returned error text is static, not ours to free.
            let _ = unsafe { dump(fd, tstate) };
        }
    }
    drop::<OwnedFd>(writer);
    let mut text = String::new();
    std::fs::File::from(reader).read_to_string(&mut text).ok()?;
    (!text.is_empty()).then_some(text)
}
