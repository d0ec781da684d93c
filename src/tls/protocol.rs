//! [`SslProtocolCore`]: the native half of ferroloop's `SSLProtocol`.
//!
//! asyncio's `sslproto.SSLProtocol` state machine, with every per-record step native:
//! the socket transport reads into [`get_buffer`](SslProtocolCore::get_buffer)'s
//! buffer and calls [`buffer_updated`](SslProtocolCore::buffer_updated), which feeds the
//! incoming BIO and advances the handshake, the reads or the shutdown; the app
//! transport's `write()` encrypts and sends. What happens once per connection (setting
//! up, the end of the handshake, timeouts, shutdown's end, errors, `connection_lost`) is
//! the Python subclass in `python/ferroloop/_tls.py`, which these methods call by
//! stock's method names, so one implementation of each step exists.

use std::collections::VecDeque;
use std::sync::Arc;

use pyo3::exceptions::{
    PyAssertionError, PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PySlice};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::bio::{is_again, is_exception, is_ssl_error, SslCalls};
use super::read::{read_buffered, read_copied};
use super::state::State;
use crate::py_cache::CachedAttr;

/// What stock asyncio's `SSLProtocol.max_size` is: the size of the receive buffer and
/// the most one decrypting read asks for.
const DEFAULT_MAX_SIZE: usize = 256 * 1024;

/// The receive buffer a connection starts with: room for one whole TLS record (16 KiB of
/// data plus header and cipher overhead). It grows to `max_size` the first time a read
/// fills it, so a connection that only handshakes (or stays idle) never allocates, and
/// never touches, the 256 KiB stock gives every connection.
const INITIAL_BUFFER: usize = 17 * 1024;

static BUFFERED_PROTOCOL: CachedAttr = CachedAttr::new("asyncio.protocols", "BufferedProtocol");

/// A zeroed bytearray of `size` bytes and a memoryview of it.
fn new_buffer(py: Python<'_>, size: usize) -> PyResult<(Py<PyByteArray>, Py<PyAny>)> {
    let buffer = PyByteArray::new_with(py, size, |_| Ok(()))?;
    let view = PyMemoryView::from(buffer.as_any())?.into_any().unbind();
    Ok((buffer.unbind(), view))
}

/// `KeyboardInterrupt` or `SystemExit`, which stock lets through its error handling.
pub(crate) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// The state and hot paths of one TLS connection's protocol. Subclassed in Python
/// (`ferroloop._tls.SSLProtocol`, also an `asyncio.BufferedProtocol`); the field names
/// Python sees are stock's attribute names.
#[pyclass(subclass, module = "ferroloop._ferroloop", name = "SSLProtocolCore")]
pub struct SslProtocolCore {
    pub(crate) state: State,
    calls: Option<Arc<SslCalls>>,
    /// The receive buffer handed to the transport, also where decrypted bytes land
    /// before they are copied out (the received bytes are in the BIO by then);
    /// [`INITIAL_BUFFER`] bytes at first, `max_size` once a read filled it.
    buffer: Option<Py<PyByteArray>>,
    /// A memoryview of `buffer`: what `get_buffer()` returns, as stock.
    view: Option<Py<PyAny>>,
    max_size: usize,
    /// The socket transport underneath.
    pub(crate) transport: Option<Py<PyAny>>,
    pub(crate) app_protocol: Option<Py<PyAny>>,
    /// The app protocol's `get_buffer`/`buffer_updated` when it is a `BufferedProtocol`.
    app_buffered: Option<(Py<PyAny>, Py<PyAny>)>,
    event_loop: Option<Py<PyAny>>,
    /// App data not yet taken by OpenSSL (references, as stock keeps them).
    pub(crate) backlog: VecDeque<Py<PyAny>>,
    pub(crate) write_buffer_size: usize,
    #[pyo3(get, set, name = "_conn_lost")]
    pub(crate) conn_lost: u32,
    /// The socket transport's buffer is full (its `pause_writing()`).
    #[pyo3(get, set, name = "_ssl_writing_paused")]
    pub(crate) ssl_writing_paused: bool,
    /// The app paused reading (`transport.pause_reading()`).
    #[pyo3(get, set, name = "_app_reading_paused")]
    pub(crate) app_reading_paused: bool,
    /// We paused the socket transport's reading (too much undecrypted input).
    #[pyo3(get, set, name = "_ssl_reading_paused")]
    pub(crate) ssl_reading_paused: bool,
    #[pyo3(get, set, name = "_eof_received")]
    pub(crate) eof_received: bool,
    /// We called the app protocol's `pause_writing()`.
    #[pyo3(get, set, name = "_app_writing_paused")]
    pub(crate) app_writing_paused: bool,
    #[pyo3(get, set, name = "_incoming_high_water")]
    pub(crate) incoming_high_water: usize,
    #[pyo3(get, set, name = "_incoming_low_water")]
    pub(crate) incoming_low_water: usize,
    #[pyo3(get, set, name = "_outgoing_high_water")]
    pub(crate) outgoing_high_water: usize,
    #[pyo3(get, set, name = "_outgoing_low_water")]
    pub(crate) outgoing_low_water: usize,
}

impl SslProtocolCore {
    /// The connection's TLS calls (after `_init_ssl`).
    pub(crate) fn calls(slf: &Bound<'_, Self>) -> PyResult<Arc<SslCalls>> {
        slf.borrow()
            .calls
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("SSL protocol is not initialised"))
    }

    /// The loop the connection runs on (for `call_soon` and the exception handler).
    pub(crate) fn event_loop<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.borrow()
            .event_loop
            .as_ref()
            .map(|l| l.bind(py).clone())
            .ok_or_else(|| PyRuntimeError::new_err("SSL protocol has no event loop"))
    }

    /// `self._fatal_error(exc, message)` (Python: logs or reports, force-closes).
    pub(crate) fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        slf.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
        Ok(())
    }

    /// `loop.call_soon(self._do_read)`: the app's buffer was filled, more may wait.
    pub(crate) fn schedule_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let callback = slf.getattr(intern!(py, "_do_read"))?;
        Self::event_loop(slf)?.call_method1(intern!(py, "call_soon"), (callback,))?;
        Ok(())
    }

    fn set_state(slf: &Bound<'_, Self>, next: State) -> PyResult<()> {
        let py = slf.py();
        let current = slf.borrow().state;
        let next = current.transition(py, next)?;
        slf.borrow_mut().state = next;
        Ok(())
    }

    /// `_do_read`: deliver what can be decrypted (unless the app paused reading), send
    /// what that produced, and adjust the transport's reading.
    pub(crate) fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !matches!(slf.borrow().state, State::Wrapped | State::Flushing) {
            return Ok(());
        }
        match Self::read_and_respond(slf) {
            Err(err) if is_exception(py, &err) => {
                Self::fatal_error(slf, err, "Fatal error on SSL protocol")
            }
            other => other,
        }
    }

    fn read_and_respond(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.borrow().app_reading_paused {
            let calls = Self::calls(slf)?;
            let buffered = slf
                .borrow()
                .app_buffered
                .as_ref()
                .map(|(g, u)| (g.clone_ref(py), u.clone_ref(py)));
            let eof = match buffered {
                Some((get_buffer, buffer_updated)) => {
                    read_buffered(slf, &calls, get_buffer.bind(py), buffer_updated.bind(py))?
                }
                None => {
                    let (buffer, view, max_size) = {
                        let this = slf.borrow();
                        match (&this.buffer, &this.view) {
                            (Some(b), Some(v)) => (b.clone_ref(py), v.clone_ref(py), this.max_size),
                            _ => return Err(PyRuntimeError::new_err("SSL protocol is closed")),
                        }
                    };
                    let outcome =
                        read_copied(py, &calls, buffer.bind(py), view.bind(py), max_size)?;
                    if let Some(data) = outcome.data {
                        let app = slf.borrow().app_protocol.as_ref().map(|p| p.clone_ref(py));
                        let app = app.unwrap_or_else(|| py.None());
                        app.bind(py)
                            .call_method1(intern!(py, "data_received"), (data,))?;
                    }
                    outcome.eof
                }
            };
            if eof {
                // The peer's close_notify.
                slf.call_method0(intern!(py, "_call_eof_received"))?;
                slf.call_method0(intern!(py, "_start_shutdown"))?;
            }
            if slf.borrow().backlog.is_empty() {
                Self::process_outgoing(slf)?;
            } else {
                Self::do_write(slf)?;
            }
        }
        Self::control_ssl_reading(slf)
    }

    /// `_do_handshake`: one step; the end (success or an `SSLError`) goes to
    /// `_on_handshake_complete`.
    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let calls = Self::calls(slf)?;
        match calls.do_handshake(py) {
            Ok(()) => {
                slf.call_method1(intern!(py, "_on_handshake_complete"), (py.None(),))?;
                Ok(())
            }
            Err(err) if is_again(py, &err)? => Self::process_outgoing(slf),
            Err(err) if is_ssl_error(py, &err)? => {
                slf.call_method1(intern!(py, "_on_handshake_complete"), (err.into_value(py),))?;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// `_do_flush`: deliver what is left, then start the close_notify exchange.
    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        Self::set_state(slf, State::Shutdown)?;
        Self::do_shutdown(slf)
    }

    /// `_do_shutdown`: one step of `unwrap()` (skipped once the peer's EOF came); the
    /// end goes to `_on_shutdown_complete`.
    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let calls = Self::calls(slf)?;
        let unwrapped = if slf.borrow().eof_received {
            Ok(())
        } else {
            calls.unwrap(py)
        };
        match unwrapped {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                slf.call_method0(intern!(py, "_call_eof_received"))?;
                slf.call_method1(intern!(py, "_on_shutdown_complete"), (py.None(),))?;
                Ok(())
            }
            Err(err) if is_again(py, &err)? => Self::process_outgoing(slf),
            Err(err) if is_ssl_error(py, &err)? => {
                slf.call_method1(intern!(py, "_on_shutdown_complete"), (err.into_value(py),))?;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// A read filled the starting buffer: more is coming than it holds, so take the
    /// full `max_size` from now on (the transport is done with the old one).
    fn grow_if_filled(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let (len, max_size) = {
            let this = slf.borrow();
            let len = this.buffer.as_ref().map_or(0, |b| b.bind(py).len());
            (len, this.max_size)
        };
        if len >= max_size || usize::try_from(nbytes).unwrap_or(0) < len {
            return Ok(());
        }
        let (buffer, view) = new_buffer(py, max_size)?;
        let mut this = slf.borrow_mut();
        this.buffer = Some(buffer);
        this.view = Some(view);
        Ok(())
    }

    /// What new input means in the current state.
    fn advance(slf: &Bound<'_, Self>) -> PyResult<()> {
        let state = slf.borrow().state;
        match state {
            State::DoHandshake => Self::do_handshake(slf),
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            State::Unwrapped => Ok(()),
        }
    }
}

#[pymethods]
impl SslProtocolCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        SslProtocolCore {
            state: State::Unwrapped,
            calls: None,
            buffer: None,
            view: None,
            max_size: DEFAULT_MAX_SIZE,
            transport: None,
            app_protocol: None,
            app_buffered: None,
            event_loop: None,
            backlog: VecDeque::new(),
            write_buffer_size: 0,
            conn_lost: 0,
            ssl_writing_paused: false,
            app_reading_paused: false,
            ssl_reading_paused: false,
            eof_received: false,
            app_writing_paused: false,
            incoming_high_water: 0,
            incoming_low_water: 0,
            outgoing_high_water: 0,
            outgoing_low_water: 0,
        }
    }

    /// Takes the connection's `SSLObject` and BIOs, looks their methods up once, and
    /// allocates the receive buffer (see [`INITIAL_BUFFER`]; it grows to `max_size`).
    fn _init_ssl(
        slf: &Bound<'_, Self>,
        sslobj: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
        max_size: usize,
    ) -> PyResult<()> {
        let py = slf.py();
        let calls = SslCalls::new(sslobj, incoming, outgoing)?;
        let max_size = max_size.max(1);
        let (buffer, view) = new_buffer(py, INITIAL_BUFFER.min(max_size))?;
        let mut this = slf.borrow_mut();
        this.calls = Some(Arc::new(calls));
        this.buffer = Some(buffer);
        this.view = Some(view);
        this.max_size = max_size;
        Ok(())
    }

    /// The `SSLObject` (`wrap_bio()`'s result).
    #[getter(_sslobj)]
    fn sslobj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.calls.as_ref().map(|c| c.sslobj.clone_ref(py))
    }

    /// The `MemoryBIO` received records go into.
    #[getter(_incoming)]
    fn incoming(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.calls.as_ref().map(|c| c.incoming.clone_ref(py))
    }

    /// The `MemoryBIO` records to send come out of.
    #[getter(_outgoing)]
    fn outgoing(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.calls.as_ref().map(|c| c.outgoing.clone_ref(py))
    }

    /// The state, as a member of stock `asyncio.sslproto.SSLProtocolState`.
    #[getter(_state)]
    fn state(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state.to_py(py)
    }

    /// `_set_state(new_state)`: stock's transition rules and message.
    fn _set_state(slf: &Bound<'_, Self>, new_state: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::set_state(slf, State::from_py(new_state)?)
    }

    #[getter(_transport)]
    fn get_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport.as_ref().map(|t| t.clone_ref(py))
    }

    #[setter(_transport)]
    fn set_transport(&mut self, transport: Option<Py<PyAny>>) {
        self.transport = transport;
    }

    #[getter(_loop)]
    fn get_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.event_loop.as_ref().map(|l| l.clone_ref(py))
    }

    #[setter(_loop)]
    fn set_loop(&mut self, event_loop: Option<Py<PyAny>>) {
        self.event_loop = event_loop;
    }

    #[getter(_app_protocol)]
    fn get_app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.app_protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Replaces the protocol reference only (connection_lost drops it this way), as an
    /// assignment to stock's attribute does; `_set_app_protocol` also decides how data
    /// is delivered.
    #[setter(_app_protocol)]
    fn set_app_protocol_attr(&mut self, protocol: Option<Py<PyAny>>) {
        self.app_protocol = protocol;
    }

    /// `_set_app_protocol(protocol)`: a `BufferedProtocol` (with a `get_buffer`) gets
    /// decrypted bytes in its own buffer, any other protocol `data_received()`.
    fn _set_app_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let buffered = if protocol.hasattr(intern!(py, "get_buffer"))?
            && protocol.is_instance(BUFFERED_PROTOCOL.get(py)?)?
        {
            Some((
                protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
                protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
            ))
        } else {
            None
        };
        let mut this = slf.borrow_mut();
        this.app_protocol = (!protocol.is_none()).then(|| protocol.clone().unbind());
        this.app_buffered = buffered;
        Ok(())
    }

    /// Whether decrypted bytes go into the app protocol's buffer.
    #[getter(_app_protocol_is_buffer)]
    fn app_protocol_is_buffer(&self) -> bool {
        self.app_buffered.is_some()
    }

    /// App data not yet encrypted, in bytes (`len()` of each chunk, as stock counts).
    #[getter(_write_buffer_size)]
    fn get_write_buffer_size_attr(&self) -> usize {
        self.write_buffer_size
    }

    /// Queues `data` unencrypted (what `_test__append_write_backlog` does in stock's
    /// tests: fill the backlog without writing).
    fn _append_write_backlog(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let len = data.len()?;
        self.backlog.push_back(data.clone().unbind());
        self.write_buffer_size += len;
        Ok(())
    }

    /// Forgets queued app data (the connection is lost).
    fn _clear_write_backlog(&mut self) {
        self.backlog.clear();
    }

    /// `get_buffer(n)`: where the transport reads received bytes into; at least `n`
    /// bytes for a positive hint up to `max_size` (-1 or 0: any size, as for stock).
    fn get_buffer(slf: &Bound<'_, Self>, n: isize) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let wanted = usize::try_from(n).unwrap_or(0);
        let (len, max_size) = {
            let this = slf.borrow();
            let len = this.buffer.as_ref().map_or(0, |b| b.bind(py).len());
            (len, this.max_size)
        };
        if wanted > len && len < max_size {
            let (buffer, view) = new_buffer(py, max_size)?;
            let mut this = slf.borrow_mut();
            this.buffer = Some(buffer);
            this.view = Some(view);
        }
        slf.borrow()
            .view
            .as_ref()
            .map(|v| v.clone_ref(py))
            .ok_or_else(|| PyRuntimeError::new_err("SSL protocol is not initialised"))
    }

    /// `buffer_updated(nbytes)`: `nbytes` arrived in the buffer; feed them to OpenSSL
    /// and act on them.
    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let calls = Self::calls(slf)?;
        let view = slf.borrow().view.as_ref().map(|v| v.clone_ref(py));
        let Some(view) = view else {
            return Err(PyRuntimeError::new_err("SSL protocol is not initialised"));
        };
        let received = view.bind(py).get_item(PySlice::new(py, 0, nbytes, 1))?;
        calls.feed(py, &received)?;
        drop(received);
        Self::grow_if_filled(slf, nbytes)?;
        Self::advance(slf)
    }

    fn _do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_handshake(slf)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    fn _do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_flush(slf)
    }

    fn _do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_shutdown(slf)
    }

    fn _do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_write(slf)
    }

    fn _process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::process_outgoing(slf)
    }

    /// `_write_appdata(list_of_data)`: any iterable of bytes-like chunks.
    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_appdata(slf, list_of_data.try_iter()?)
    }

    /// The app transport's `write(data)`, bound onto each transport: stock's checks,
    /// then `_write_appdata((data,))`.
    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        Self::write_appdata(slf, [Ok(data.clone())])
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    fn _get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Self::write_buffer_size(slf)
    }

    fn _get_read_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Self::calls(slf)?.incoming_pending(slf.py())
    }

    /// The socket transport's buffer went over its high-water mark.
    fn pause_writing(&mut self) -> PyResult<()> {
        if self.ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        self.ssl_writing_paused = true;
        Ok(())
    }

    /// The socket transport's buffer drained: send what was held back.
    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.borrow().ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        slf.borrow_mut().ssl_writing_paused = false;
        Self::process_outgoing(slf)
    }

    /// The app transport's `pause_reading()`.
    fn _pause_reading(&mut self) {
        self.app_reading_paused = true;
    }

    /// The app transport's `resume_reading()`: deliver again, from the next iteration.
    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.borrow().app_reading_paused {
            return Ok(());
        }
        slf.borrow_mut().app_reading_paused = false;
        let callback = slf.getattr(intern!(py, "_continue_after_resume"))?;
        Self::event_loop(slf)?.call_method1(intern!(py, "call_soon"), (callback,))?;
        Ok(())
    }

    /// What a resumed reader does: go on with whatever the state was waiting for.
    fn _continue_after_resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        let state = slf.borrow().state;
        match state {
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(calls) = &self.calls {
            calls.traverse(&visit)?;
        }
        visit.call(&self.buffer)?;
        visit.call(&self.view)?;
        visit.call(&self.transport)?;
        visit.call(&self.app_protocol)?;
        if let Some((get_buffer, buffer_updated)) = &self.app_buffered {
            visit.call(get_buffer)?;
            visit.call(buffer_updated)?;
        }
        visit.call(&self.event_loop)?;
        for data in &self.backlog {
            visit.call(data)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.calls = None;
        self.buffer = None;
        self.view = None;
        self.transport = None;
        self.app_protocol = None;
        self.app_buffered = None;
        self.event_loop = None;
        self.backlog.clear();
    }
}
