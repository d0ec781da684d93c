//! `loop._transports[fd] = transport` without the Python frames it takes.
//!
//! The loop's transport registry is a `weakref.WeakValueDictionary`, whose `__setitem__`
//! stores a `weakref.KeyedRef(transport, self._remove, fd)` in `self.data`, creating the
//! reference through two Python methods (`KeyedRef.__new__` and `__init__`, the latter
//! with `super()`): about a tenth of what accepting a connection costs. Here the same
//! reference is made by `weakref.ref.__new__` (what `KeyedRef.__new__` calls) and its
//! `key` set, and stored in `data`: the registry ends up exactly as `__setitem__` leaves
//! it. Anything else (another mapping type, removals waiting while the registry is being
//! iterated on 3.11-3.13) goes through `__setitem__` itself.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::py_cache::CachedAttr;

static WEAK_VALUE_DICTIONARY: CachedAttr = CachedAttr::new("weakref", "WeakValueDictionary");
static KEYED_REF: CachedAttr = CachedAttr::new("weakref", "KeyedRef");
static WEAK_REF: CachedAttr = CachedAttr::new("weakref", "ref");

/// `weakref.ref.__new__`, what `KeyedRef.__new__` creates the reference with.
fn weak_ref_new(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    NEW.get_or_try_init(py, || {
        Ok::<_, PyErr>(WEAK_REF.get(py)?.getattr("__new__")?.unbind())
    })
    .map(|new| new.bind(py))
}

/// Whether `registry` is exactly a `weakref.WeakValueDictionary`.
pub(crate) fn is_weak_value_dictionary(registry: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(registry
        .get_type()
        .is(WEAK_VALUE_DICTIONARY.get(registry.py())?))
}

/// `registry[fd] = transport`, for the loop's transport registry (see the module
/// documentation).
#[pyfunction]
pub fn _register_transport(
    registry: &Bound<'_, PyAny>,
    fd: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = registry.py();
    if is_weak_value_dictionary(registry)? {
        // 3.11-3.13 commit pending removals first; 3.14 has none.
        let pending = registry.getattr_opt(intern!(py, "_pending_removals"))?;
        if !pending.map_or(Ok(false), |p| p.is_truthy())? {
            let remove = registry.getattr(intern!(py, "_remove"))?;
            let keyed_ref = KEYED_REF.get(py)?;
            let reference = weak_ref_new(py)?.call1((keyed_ref, transport, remove))?;
            reference.setattr(intern!(py, "key"), fd)?;
            registry
                .getattr(intern!(py, "data"))?
                .set_item(fd, reference)?;
            return Ok(());
        }
    }
    registry.set_item(fd, transport)
}
