//! The outgoing direction and flow control both ways.
//!
//! Stock's `_write_appdata`, `_do_write`, `_process_outgoing`, `_control_app_writing`
//! and `_control_ssl_reading`. The app's data is kept by reference until OpenSSL takes
//! it (stock's backlog, so a buffer changed before the handshake ends is sent as it is
//! then), and every record made is handed to the transport as one `bytes`.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PySlice};
use pyo3::{intern, IntoPyObjectExt};

use super::bio::{is_again, is_exception};
use super::protocol::SslProtocolCore;
use super::state::State;
use crate::py_cache::ASYNCIO_LOG_MODULE;

/// After this many writes to a closed connection, each further one is logged (asyncio's
/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

impl SslProtocolCore {
    /// `_write_appdata(list_of_data)`: queue the chunks, and encrypt them at once if the
    /// session is up. Errors (other than exits) go to `_fatal_error`, as stock.
    pub(crate) fn write_appdata<'py>(
        slf: &Bound<'py, Self>,
        chunks: impl IntoIterator<Item = PyResult<Bound<'py, PyAny>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let state = slf.borrow().state;
        if matches!(state, State::Flushing | State::Shutdown | State::Unwrapped) {
            let lost = {
                let mut this = slf.borrow_mut();
                let lost = this.conn_lost;
                this.conn_lost += 1;
                lost
            };
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                ASYNCIO_LOG_MODULE
                    .get(py)?
                    .getattr(intern!(py, "logger"))?
                    .call_method1(intern!(py, "warning"), ("SSL connection is closed",))?;
            }
            return Ok(());
        }
        for chunk in chunks {
            let chunk = chunk?;
            let len = chunk.len()?;
            let mut this = slf.borrow_mut();
            this.backlog.push_back(chunk.unbind());
            this.write_buffer_size += len;
        }
        if slf.borrow().state != State::Wrapped {
            return Ok(());
        }
        match Self::do_write(slf) {
            Err(err) if is_exception(py, &err) => {
                Self::fatal_error(slf, err, "Fatal error on SSL protocol")
            }
            other => other,
        }
    }

    /// `_do_write`: hand queued chunks to OpenSSL until done or it wants input first
    /// (a TLS 1.2 renegotiation), then send what it made.
    pub(crate) fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let calls = Self::calls(slf)?;
        loop {
            let Some(data) = slf.borrow().backlog.front().map(|d| d.clone_ref(py)) else {
                break;
            };
            let data = data.bind(py);
            let count = match calls.write(py, data) {
                Ok(count) => count,
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            };
            let len = data.len()?;
            if count < len {
                let rest = data.get_item(PySlice::new(py, count as isize, isize::MAX, 1))?;
                let mut this = slf.borrow_mut();
                if let Some(front) = this.backlog.front_mut() {
                    *front = rest.unbind();
                }
                this.write_buffer_size = this.write_buffer_size.saturating_sub(count);
            } else {
                let mut this = slf.borrow_mut();
                this.backlog.pop_front();
                this.write_buffer_size = this.write_buffer_size.saturating_sub(len);
            }
        }
        Self::process_outgoing(slf)
    }

    /// `_process_outgoing`: unless the transport asked us to pause, send the records
    /// OpenSSL made; then tell the app whether to pause or resume writing.
    pub(crate) fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let calls = Self::calls(slf)?;
        if !slf.borrow().ssl_writing_paused && calls.outgoing_pending(py)? > 0 {
            let data = calls.drain_outgoing(py)?;
            Self::transport_attr(slf, intern!(py, "write"))?.call1((data,))?;
        }
        Self::control_app_writing(slf)
    }

    /// `_get_write_buffer_size`: records not yet sent plus app data not yet encrypted.
    pub(crate) fn write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        let py = slf.py();
        let pending = Self::calls(slf)?.outgoing_pending(py)?;
        Ok(pending + slf.borrow().write_buffer_size)
    }

    /// `_control_app_writing`: call the app protocol's `pause_writing()` when the write
    /// buffer reaches the high-water mark, `resume_writing()` when it falls to the low
    /// one; their errors go to the exception handler.
    pub(crate) fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::write_buffer_size(slf)?;
        let (pause, resume) = {
            let this = slf.borrow();
            (
                size >= this.outgoing_high_water && !this.app_writing_paused,
                size <= this.outgoing_low_water && this.app_writing_paused,
            )
        };
        let (method, message) = if pause {
            (
                intern!(py, "pause_writing"),
                "protocol.pause_writing() failed",
            )
        } else if resume {
            (
                intern!(py, "resume_writing"),
                "protocol.resume_writing() failed",
            )
        } else {
            return Ok(());
        };
        slf.borrow_mut().app_writing_paused = pause;
        let app_protocol = slf.borrow().app_protocol.as_ref().map(|p| p.clone_ref(py));
        let called = match app_protocol {
            Some(protocol) => protocol.bind(py).call_method0(method).map(drop),
            None => py.None().bind(py).getattr(method).map(drop),
        };
        match called {
            Err(err) if !crate::tls::protocol::is_exit(py, &err) => {
                Self::report_to_handler(slf, message, err)
            }
            other => other,
        }
    }

    /// `loop.call_exception_handler({...})` for a failed flow-control callback.
    fn report_to_handler(slf: &Bound<'_, Self>, message: &str, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let context = PyDict::new(py);
        context.set_item(intern!(py, "message"), message)?;
        context.set_item(intern!(py, "exception"), err.into_value(py))?;
        let app_transport = slf.getattr(intern!(py, "_app_transport"))?;
        context.set_item(intern!(py, "transport"), app_transport)?;
        context.set_item(intern!(py, "protocol"), slf)?;
        Self::event_loop(slf)?.call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }

    /// `_control_ssl_reading`: pause the transport's reading while more than the
    /// high-water mark of received bytes waits to be decrypted; resume at the low one.
    pub(crate) fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = Self::calls(slf)?.incoming_pending(py)?;
        let (pause, resume) = {
            let this = slf.borrow();
            (
                size >= this.incoming_high_water && !this.ssl_reading_paused,
                size <= this.incoming_low_water && this.ssl_reading_paused,
            )
        };
        if pause || resume {
            slf.borrow_mut().ssl_reading_paused = pause;
            let method = if pause {
                intern!(py, "pause_reading")
            } else {
                intern!(py, "resume_reading")
            };
            Self::transport_attr(slf, method)?.call0()?;
        }
        Ok(())
    }

    /// `self._transport.<name>`, failing as stock's attribute access on `None` does.
    pub(crate) fn transport_attr<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, pyo3::types::PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let transport = slf.borrow().transport.as_ref().map(|t| t.clone_ref(py));
        match transport {
            Some(transport) => transport.into_bound_py_any(py)?.getattr(name),
            None => py.None().into_bound(py).getattr(name),
        }
    }
}
