//! The states of asyncio's `SSLProtocol` and the transitions it allows.
//!
//! The native protocol keeps its state as a small enum; Python code (the cold paths in
//! `python/ferroloop/_tls.py`, and libraries that peek) sees the members of stock
//! `asyncio.sslproto.SSLProtocolState`, so comparisons written against stock hold.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// Where the TLS session is: asyncio's `SSLProtocolState`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl State {
    const ALL: [State; 5] = [
        State::Unwrapped,
        State::DoHandshake,
        State::Wrapped,
        State::Flushing,
        State::Shutdown,
    ];

    fn name(self) -> &'static str {
        match self {
            State::Unwrapped => "UNWRAPPED",
            State::DoHandshake => "DO_HANDSHAKE",
            State::Wrapped => "WRAPPED",
            State::Flushing => "FLUSHING",
            State::Shutdown => "SHUTDOWN",
        }
    }

    /// Whether stock's `_set_state` lets the protocol go from `self` to `next`: to
    /// UNWRAPPED from anywhere, otherwise only one step along
    /// UNWRAPPED → DO_HANDSHAKE → WRAPPED → FLUSHING → SHUTDOWN.
    pub(crate) fn may_become(self, next: State) -> bool {
        matches!(
            (self, next),
            (_, State::Unwrapped)
                | (State::Unwrapped, State::DoHandshake)
                | (State::DoHandshake, State::Wrapped)
                | (State::Wrapped, State::Flushing)
                | (State::Flushing, State::Shutdown)
        )
    }

    /// The stock enum member for this state.
    pub(crate) fn to_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let members = stock_members(py)?;
        let index = State::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Ok(members[index].clone_ref(py))
    }

    /// The state a stock enum member (or its value string) stands for.
    pub(crate) fn from_py(value: &Bound<'_, PyAny>) -> PyResult<State> {
        let py = value.py();
        let members = stock_members(py)?;
        for (state, member) in State::ALL.iter().zip(members.iter()) {
            if value.is(member.bind(py)) {
                return Ok(*state);
            }
        }
        Err(PyValueError::new_err(format!(
            "{} is not a valid SSLProtocolState",
            value.repr()?
        )))
    }

    /// `_set_state(next)`, with stock's refusal message (the members formatted as
    /// `str()` formats them) for a transition it forbids.
    pub(crate) fn transition(self, py: Python<'_>, next: State) -> PyResult<State> {
        if self.may_become(next) {
            return Ok(next);
        }
        let from = self.to_py(py)?;
        let to = next.to_py(py)?;
        Err(PyRuntimeError::new_err(format!(
            "cannot switch state from {} to {}",
            from.bind(py).str()?,
            to.bind(py).str()?
        )))
    }
}

/// `asyncio.sslproto.SSLProtocolState`'s members, in [`State::ALL`]'s order.
fn stock_members(py: Python<'_>) -> PyResult<&[Py<PyAny>; 5]> {
    static MEMBERS: PyOnceLock<[Py<PyAny>; 5]> = PyOnceLock::new();
    MEMBERS.get_or_try_init(py, || {
        let enum_type = py.import("asyncio.sslproto")?.getattr("SSLProtocolState")?;
        let member = |state: State| enum_type.getattr(state.name()).map(Bound::unbind);
        Ok([
            member(State::Unwrapped)?,
            member(State::DoHandshake)?,
            member(State::Wrapped)?,
            member(State::Flushing)?,
            member(State::Shutdown)?,
        ])
    })
}
