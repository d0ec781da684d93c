"""Subprocess transports and ferroloop's own child-exit watching.

The transport is asyncio's ``unix_events._UnixSubprocessTransport`` as is (a
``subprocess.Popen`` plus asyncio's pipe transports); what this module replaces is the
child watcher. asyncio asked the policy's watcher on 3.11-3.13 and keeps a private one
made in ``_UnixSelectorEventLoop.__init__`` on 3.14+; ferroloop watches its children
itself, the same way on every version:

* A pidfd (``os.pidfd_open``) in the loop's native poller, through ``_add_reader``.
  It becomes readable once the child has exited; the reader reaps it with
  ``waitpid(pid, WNOHANG)`` and hands the exit code to ``transp._process_exited`` in
  the same callback. Reaping and publishing are one step on the loop thread, so a
  ``send_signal`` can never reach the freed (maybe recycled) pid (gh-127049), and there
  is no thread per child. The pidfd is closed as soon as it has fired.
* Where the kernel offers no pidfd (no ``pidfd_open``, ENOSYS, a sandbox's EPERM, or
  any other failure to get one), a daemon thread per child waits with
  ``waitid(WEXITED | WNOWAIT)``, which leaves the child a zombie, and asks the loop with
  ``call_soon_threadsafe`` to reap and publish: the same single step, as 3.14's
  ``_ThreadedChildWatcher`` does.

A reader callback costs one Python call per child exit, which is nothing next to the
fork and exec that made the child, so the pidfd needs no native registration of its own.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from asyncio import tasks, unix_events
from asyncio.log import logger

__all__ = ["child_exited", "loop_closed", "make_subprocess_transport"]

# 3.14 shields the wait for a child killed because its start was cancelled, so a second
# cancellation cannot abandon it; 3.11-3.13 await it directly.
_SHIELD_CLEANUP_WAIT = sys.version_info >= (3, 14)

# On 3.11 the stock loop's default watcher is the threaded one: a child that outlives
# its loop is still reaped, with a warning, when it exits. 3.12+ default to the pidfd
# watcher, which says nothing then (and leaks the pidfd, which ferroloop closes).
_REAP_AFTER_CLOSE = sys.version_info < (3, 12)


async def make_subprocess_transport(
    self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
):
    """``loop._make_subprocess_transport``: start the child, watch its exit, and return
    the transport once its pipes are connected. As the stock Unix loop's, minus the
    child watcher: a failure or cancellation while the pipes connect kills the child and
    waits for its exit before raising."""
    waiter = self.create_future()
    transp = unix_events._UnixSubprocessTransport(
        self,
        protocol,
        args,
        shell,
        stdin,
        stdout,
        stderr,
        bufsize,
        waiter=waiter,
        extra=extra,
        **kwargs,
    )
    _watch(self, transp.get_pid(), transp)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        if _SHIELD_CLEANUP_WAIT:
            await tasks.shield(transp._wait())
        else:
            await transp._wait()
        raise
    return transp


def child_exited(self, pid, returncode, transp) -> None:
    """``loop._child_watcher_callback``: publish the exit of child ``pid``. Called on
    the loop thread right after the reap; 3.11-3.13 scheduled it once or twice more
    (a leftover of thread-based watchers, gh-98057), which only widened the window in
    which ``send_signal`` could hit a reaped pid."""
    transp._process_exited(returncode)


def loop_closed(loop) -> None:
    """Called by ``Loop.close`` after the poller is gone: close the pidfds of children
    still running. Their exit can no longer be reported; on 3.11, as the stock default
    watcher does, a thread still reaps each one when it exits, with asyncio's warning."""
    children, loop._child_pidfds = loop._child_pidfds, {}
    for pidfd, pid in children.items():
        os.close(pidfd)
        if _REAP_AFTER_CLOSE and _is_child(pid):
            _start_thread(loop, pid, None)


def _is_child(pid: int) -> bool:
    # False in a forked process closing the loop it inherited: the pids are its parent's.
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


# -- pidfd --------------------------------------------------------------------------------


def _watch(loop, pid: int, transp) -> None:
    try:
        # Looked up on each call, so a test can take pidfd support away.
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        # No pidfds here (ENOSYS, a sandbox's EPERM), or none to spare (EMFILE): a
        # thread needs no descriptor.
        _start_thread(loop, pid, transp)
        return
    loop._child_pidfds[pidfd] = pid
    loop._add_reader(pidfd, _pidfd_readable, loop, pid, pidfd, transp)


def _pidfd_readable(loop, pid: int, pidfd: int, transp) -> None:
    # The child has exited: reap it without blocking and publish in the same step.
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        reaped = pid
        returncode = _reaped_elsewhere(
            transp,
            pid,
            "child process pid %d exit status already read:  will report returncode 255",
        )
    except BaseException:
        # Anything else still ends the watch, as stock's watcher does: the error goes to
        # the loop's exception handler, the descriptor is not leaked.
        _forget(loop, pidfd)
        raise
    else:
        if reaped == 0:
            return  # Not waitable yet; the pidfd stays registered and fires again.
        returncode = os.waitstatus_to_exitcode(status)
    _forget(loop, pidfd)
    loop._child_watcher_callback(reaped, returncode, transp)


def _reaped_elsewhere(transp, pid: int, warning: str) -> int:
    proc = transp._proc if transp is not None else None
    if proc is not None and proc.returncode is not None:
        # The Popen reaped the child itself: its poll(), which 3.11/3.12's send_signal()
        # calls first (gh-87744), or a wait() on get_extra_info("subprocess"). The status
        # it read is the real one; stock reports 255 here when its watcher comes second.
        return proc.returncode
    # Someone else read the status (a waitpid() elsewhere in the program).
    logger.warning(warning, pid)
    return 255


def _forget(loop, pidfd: int) -> None:
    loop._remove_reader(pidfd)
    del loop._child_pidfds[pidfd]
    os.close(pidfd)


# -- a thread per child, without pidfds ----------------------------------------------------

_thread_numbers = itertools.count(1)


def _start_thread(loop, pid: int, transp) -> None:
    thread = threading.Thread(
        target=_wait_in_thread,
        name=f"ferroloop-waitpid-{next(_thread_numbers)}",
        args=(loop, pid, transp),
        daemon=True,
    )
    thread.start()


def _wait_in_thread(loop, pid: int, transp) -> None:
    # WNOWAIT leaves the child a zombie: its pid stays reserved until the loop thread
    # reaps and publishes it, so send_signal() never targets a recycled pid.
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass  # Already reaped elsewhere; the reap below reports it.
    if transp is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_reap_and_publish, loop, pid, transp)
            return
        except RuntimeError:
            pass  # The loop closed meanwhile.
    _reap(loop, pid, None)
    logger.warning("Loop %r that handles pid %r is closed", loop, pid)


def _reap_and_publish(loop, pid: int, transp) -> None:
    returncode = _reap(loop, pid, transp)
    loop._child_watcher_callback(pid, returncode, transp)


def _reap(loop, pid: int, transp) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return _reaped_elsewhere(
            transp, pid, "Unknown child process pid %d, will report returncode 255"
        )
    returncode = os.waitstatus_to_exitcode(status)
    if loop.get_debug():
        logger.debug("process %s exited with returncode %s", pid, returncode)
    return returncode
