//! Python objects the loop looks up once and then reuses.
//!
//! Each lives in a `PyOnceLock`, which is safe to initialise from several threads (and
//! on free-threaded builds), so there is no unguarded global state here.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A lazily imported module attribute, e.g. `asyncio.futures.Future`.
pub struct CachedAttr {
    module: &'static str,
    name: &'static str,
    cell: PyOnceLock<Py<PyAny>>,
}

impl CachedAttr {
    /// Declares `module.name`, imported on first use.
    pub const fn new(module: &'static str, name: &'static str) -> Self {
        CachedAttr {
            module,
            name,
            cell: PyOnceLock::new(),
        }
    }

    /// The attribute, importing its module the first time.
    pub fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        self.cell
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import(self.module)?.getattr(self.name)?.unbind())
            })
            .map(|obj| obj.bind(py))
    }
}

/// `asyncio.tasks`, whose `Task` attribute `loop.create_task()` instantiates (looked up
/// per call, as asyncio does, so a patched `asyncio.tasks.Task` is honoured).
pub static TASKS_MODULE: CachedAttr = CachedAttr::new("asyncio", "tasks");
/// `asyncio.BaseEventLoop`, whose `create_task` runs where the native one hands over
/// (task factories, debug mode).
pub static BASE_EVENT_LOOP: CachedAttr = CachedAttr::new("asyncio.base_events", "BaseEventLoop");
/// `asyncio.futures.Future`: what `loop.create_future()` instantiates.
pub static FUTURE_TYPE: CachedAttr = CachedAttr::new("asyncio.futures", "Future");
static FORMAT_CALLBACK_SOURCE: CachedAttr =
    CachedAttr::new("asyncio.format_helpers", "_format_callback_source");
static FORMAT_TAKES_DEBUG: PyOnceLock<bool> = PyOnceLock::new();

/// Formats `callback(args)` for messages and reprs exactly as asyncio does. Newer
/// Pythons take a `debug` flag (arguments are shown only in debug mode); it is passed
/// where the installed asyncio accepts it.
pub fn format_callback_source<'py>(
    callback: &Bound<'py, PyAny>,
    args: Option<&Bound<'py, PyAny>>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callback.py();
    let format = FORMAT_CALLBACK_SOURCE.get(py)?;
    let takes_debug = *FORMAT_TAKES_DEBUG.get_or_try_init(py, || {
        let signature = py.import("inspect")?.call_method1("signature", (format,))?;
        signature.getattr("parameters")?.contains("debug")
    })?;
    if takes_debug {
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("debug", debug)?;
        format.call((callback, args), Some(&kwargs))
    } else {
        format.call1((callback, args))
    }
}
/// Captures a handle's creation stack in debug mode.
pub static EXTRACT_STACK: CachedAttr = CachedAttr::new("asyncio.format_helpers", "extract_stack");
/// `sys._getframe`, for the stack above.
pub static GETFRAME: CachedAttr = CachedAttr::new("sys", "_getframe");
/// `asyncio.base_events`: its `logger` and `_format_handle` are looked up per use (only
/// for slow-callback warnings), as asyncio's own code does, so a patched logger is used.
pub static BASE_EVENTS_MODULE: CachedAttr = CachedAttr::new("asyncio", "base_events");
/// `asyncio.log`, whose `logger` is looked up per use (rare warnings), as asyncio does.
pub static ASYNCIO_LOG_MODULE: CachedAttr = CachedAttr::new("asyncio", "log");
/// `asyncio.base_events._check_ssl_socket`: the check `sock_*` methods start with.
pub static CHECK_SSL_SOCKET: CachedAttr =
    CachedAttr::new("asyncio.base_events", "_check_ssl_socket");
/// `socket.socket`: sockets of exactly this type get the direct syscall path.
pub static SOCKET_TYPE: CachedAttr = CachedAttr::new("socket", "socket");
/// `asyncio.events._ThreadSafeHandle` (3.14+): what a thread-safe handle reports as its
/// `__class__`.
pub static THREAD_SAFE_HANDLE_TYPE: CachedAttr =
    CachedAttr::new("asyncio.events", "_ThreadSafeHandle");
