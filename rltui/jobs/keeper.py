"""The keeper: one small supervisor process per job that runs it to its end.

Usage:
    python -m rltui.jobs.keeper [--detach] JOB_DIR

Started by rltui.jobs detached in a new session, so it outlives the TUI, an SSH disconnect and a
returning `rltui --batch`. It starts the job's command in its own process group with stdout and
stderr going to JOB_DIR/output.log, writes JOB_DIR/state.json atomically at every transition,
turns SIGTERM/SIGINT into a graceful stop (stop request file first, then SIGTERM to the group after
a grace period longer than a step, then SIGKILL) and SIGUSR1 into an immediate kill, watches the
trainer's status.json for hangs, applies the restart policy (rltui.jobs.policy), accounts GPU
usage, and starts the job's follow-ups when it succeeds. `--detach` forks once more and returns at
once, so the launcher can reap it and no zombie is left.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

from rltui import gpu as gpu_mod
from rltui.errors import UsageError
from rltui.jobs import builders, output, ownership
from rltui.jobs.records import (
    JobKind,
    JobSpec,
    JobState,
    StateFile,
    effective_auto_resume,
    read_spec,
    read_state,
    update_state,
    with_code_root,
)
from rltui.runs import disk, writer_lock
from rltui.runs.folders import eval_folders_of
from rltui.runs.localfs import DamagedFile, Layout, read_json
from rltui.runs.machine import boot_time, this_host
from rltui.jobs.policy import Action, Ending, RestartPolicy
from rltui.jobs.usage import UsageMeter, price_from_env, tree_pids

USAGE_SAMPLE_S = 2.0
USAGE_WRITE_S = 10.0


class ChildProcess(Protocol):
    pid: int

    def poll(self) -> int | None: ...  # the return code; negative: killed by that signal

    def signal_group(self, sig: int) -> None: ...


Spawner = Callable[[Sequence[str], dict, "str | None", Path], ChildProcess]


class PopenChild:
    """A real child in its own session and process group (pgid == pid).

    Until the keeper reaps it, the child's pid (so its group id) cannot name anybody else: the
    whole group is signalled. Once reaped, only members that carry the job's token
    (ownership.JOB_ENV) are: the group id may by then be free for another group.
    """

    def __init__(self, popen: subprocess.Popen, job_id: str = "") -> None:
        self.popen = popen
        self.pid = popen.pid
        self.job_id = job_id

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        if self.popen.returncode is not None:
            ownership.signal_job_members(self.job_id, self.pid, sig)
            return
        try:
            os.killpg(self.pid, sig)
            ownership.tally.sent += 1
        except (ProcessLookupError, PermissionError):
            pass


def _die_with_keeper() -> None:
    """In the child, before exec: get SIGKILL if the keeper dies, so no job runs unsupervised."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_process(argv: Sequence[str], env: dict, cwd: str | None, log_path: Path) -> PopenChild:
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=cwd or None, env=env,
            preexec_fn=_die_with_keeper if sys.platform.startswith("linux") else None,
        )
    return PopenChild(popen, env.get(ownership.JOB_ENV, ""))


#: Phases that may rightly go long without progress: they get the longer allowance.
SLOW_PHASES = ("saving", "loading")


def read_progress(path: Path) -> tuple[dict, float] | None:
    """A status file's content and mtime, or None while it is missing or damaged."""
    try:
        mtime = path.stat().st_mtime
        d = read_json(path)
    except (OSError, DamagedFile):
        return None
    return (d, mtime) if isinstance(d, dict) else None


def eval_progress(layout: Layout, run: str, pid: int) -> Callable[[], tuple[dict, float] | None]:
    """The progress of the evaluation process `pid` of `run`: the eval_status.json that names it.

    An eval job's dataset may come from the run's config, so the keeper does not know its folder;
    it looks at every `eval_runs/RUN_*/eval_status.json` and takes the one this process writes.
    """
    known: list[Path] = []  # the file once found: the poll loop then reads only it

    def ours(path: Path) -> tuple[dict, float] | None:
        found = read_progress(path)
        return found if found is not None and found[0].get("pid") == pid else None

    def read() -> tuple[dict, float] | None:
        if known:
            return ours(known[0])
        for _dataset, folder in eval_folders_of(layout, run):  # the one ownership rule
            path = folder / "eval_status.json"
            if (found := ours(path)) is not None:
                known.append(path)
                return found
        return None
    return read


@dataclass
class HangWatch:
    """No progress in a status file for the hang timeout (longer in a slow phase) = hung.

    `read` gives the file's content and mtime: the run's status.json for training, the
    evaluation's eval_status.json for an eval job. Progress is any change of its time, step,
    phase, counters or mtime.
    """

    read: Callable[[], tuple[dict, float] | None]
    timeout_s: float
    save_timeout_s: float
    clock: Callable[[], float]
    last_progress: float = 0.0
    _token: tuple | None = None
    phase: str | None = None

    def __post_init__(self) -> None:
        self.last_progress = self.clock()
        self._token = self._read_token()

    def _read_token(self) -> tuple | None:
        found = self.read()
        if found is None:
            return None
        d, mtime = found
        self.phase = d.get("phase")
        return (d.get("time"), d.get("step"), d.get("phase"), d.get("current_step"),
                d.get("completions_done"), mtime)

    def hung(self) -> bool:
        token = self._read_token()
        if token is not None and token != self._token:
            self._token = token
            self.last_progress = self.clock()
        # Until the process has written its status (start-up, imports) or in a slow phase, the
        # longer allowance applies.
        slow = self._token is None or self.phase in SLOW_PHASES
        limit = self.save_timeout_s if slow else self.timeout_s
        return self.clock() - self.last_progress > limit


class Wakeup:
    """A sleep that ends early when `wake` is called or a signal arrives (a self-pipe).

    The keeper polls its child every 0.5 s; a user's stop or kill, and the child's exit, must not
    wait out that poll. `install` makes the interpreter write a byte for every handled signal,
    whichever thread the system delivered it to, so the sleeping `select` returns; the handler's
    own `wake` covers a handler that runs after the loop has looked at its flags. The pipe's ends
    are not inherited by the job's processes (PEP 446)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def sleep(self, seconds: float) -> None:
        ready, _, _ = select.select([self._read], [], [], max(0.0, seconds))
        if ready:
            self._drain()

    def install(self) -> None:
        """Have every handled signal wake the sleep (main thread only, as signal.signal)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def wake(self) -> None:
        try:
            os.write(self._write, b"w")
        except BlockingIOError:  # the pipe is full: a wake-up is already waiting
            pass

    def _drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


class Keeper:
    """Runs one job to its end. Clock, sleep, spawner and sampler are injected for tests; without
    an injected sleep, a stop or kill signal ends the keeper's current sleep at once (Wakeup)."""

    def __init__(
        self, layout: Layout, job_id: str, *, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None, spawner: Spawner = spawn_process,
        sampler: gpu_mod.Sampler | None = None, poll_s: float = 0.5,
        on_end: Callable[["Keeper"], None] | None = None,
    ) -> None:
        self.layout = layout
        self.job_id = job_id
        self.clock = clock
        self.wakeup = Wakeup() if sleep is None else None
        self.sleep = sleep if sleep is not None else self.wakeup.sleep
        self.spawner = spawner
        self.sampler = sampler
        self.poll_s = poll_s
        self.on_end = on_end
        self.stop_requested = False
        self.kill_requested = False
        self.output_start = 0  # where the current attempt's output begins in output.log
        self.spec: JobSpec = read_spec(layout, job_id)
        try:
            self.state = read_state(layout, job_id)
        except (FileNotFoundError, DamagedFile):
            self.state = StateFile(JobState.STARTING, run=self.spec.run)
        self.policy = RestartPolicy(self.spec.restart, clock=clock)
        price, warning = price_from_env()
        self.usage = UsageMeter(price, self.state.gpus)
        self._price_warning = warning

    # ------------------------------------------------------------ signals from users

    def request_stop(self, *_: object) -> None:
        self.stop_requested = True
        self._wake()

    def request_kill(self, *_: object) -> None:
        self.stop_requested = True
        self.kill_requested = True
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.wake()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGUSR1, self.request_kill)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if self.wakeup is not None:
            # A child's exit wakes the poll too: the job's end is recorded at once, not 0.5 s later.
            signal.signal(signal.SIGCHLD, lambda *_: None)
            self.wakeup.install()

    # ------------------------------------------------------------ the job's life

    def run(self) -> JobState:
        s = self.state
        s.keeper_pid, s.host, s.boot_time = os.getpid(), this_host(), boot_time()
        s.keeper_start = ownership.start_ticks(os.getpid())
        s.started_at = s.started_at or time.time()
        s.run = self.spec.run
        if self._price_warning:
            self.log(self._price_warning)
        argv = list(self.spec.argv)
        while True:
            if self.stop_requested:
                return self.finish(JobState.STOPPED, "stopped by the user before it started")
            ending = self.run_once(argv)
            s.cause = self.cause_of(ending)
            self.refresh_auto_resume()
            latest = self.latest_checkpoint()
            decision = self.policy.decide(ending, latest, target=self.target_step(),
                                          needs_checkpoint=bool(self.spec.resume_argv),
                                          checkpoints=self.spec.kind.trains)
            s.restarts = self.policy.restarts
            if decision.action is Action.SUCCEED:
                return self.finish(JobState.SUCCEEDED, decision.reason)
            if decision.action is Action.STOP:
                why = "killed by the user (SIGKILL to the group)" if self.kill_requested else decision.reason
                return self.finish(JobState.STOPPED, why)
            if decision.action is Action.FAIL:
                self.remove_unused_run_folder()
                return self.finish(JobState.FAILED, decision.reason)
            self.transition(JobState.RESTARTING, decision.reason)
            if not self.wait_backoff() or not self.wait_for_writer():
                return self.finish(JobState.STOPPED, "stopped by the user while waiting to restart")
            latest, target = self.latest_checkpoint(), self.target_step()
            if latest is not None and target is not None and latest >= target:
                return self.finish(JobState.SUCCEEDED, f"another process finished the run meanwhile "
                                                       f"(final checkpoint step {latest})")
            argv = self.restart_argv(latest)

    def cause_of(self, ending: Ending) -> str | None:
        """The process's own line on why it ended (`output.cause_line`), for an end that was
        neither clean nor asked for; None otherwise or when its output says nothing."""
        if ending.clean or ending.user_stop or ending.start_error is not None:
            return None
        try:
            with output.open_output(self.layout, self.job_id) as f:
                return output.cause_line(f, start=self.output_start)
        except (OSError, UsageError):
            return None

    def run_once(self, argv: list[str]) -> Ending:
        """Start argv once and watch it to its end."""
        self.clear_stop_request()
        self.state.cause = None
        self.output_start = output.output_size(self.layout, self.job_id)  # this attempt's output begins here
        env = dict(os.environ)
        env.update(self.spec.env)
        if self.state.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.state.gpus)
        env[ownership.JOB_ENV] = self.job_id  # the token that proves a process is this job's
        env = with_code_root(env)
        self.transition(JobState.STARTING, None)
        self.log(f"starting: {shlex.join(argv)}")
        try:
            child = self.spawner(argv, env, self.spec.cwd, self.layout.job_log(self.job_id))
        except OSError as e:
            return Ending(start_error=f"{e.strerror or e} ({argv[0]})")
        self.state.child_pid = self.state.pgid = child.pid
        self.state.pgid_start = ownership.start_ticks(child.pid)
        self.state.exit_code = self.state.signal = None
        self.transition(JobState.RUNNING, f"process started (pid {child.pid})")
        return self.watch(child)

    def watch(self, child: ChildProcess) -> Ending:
        s = self.spec.restart
        hang = None
        if self.spec.kind.trains and self.spec.run:
            status_path = self.layout.run_status(self.spec.run)
            hang = HangWatch(lambda: read_progress(status_path), s.hang_timeout_s,
                             s.save_hang_timeout_s, self.clock)
        elif self.spec.kind is JobKind.EVAL and self.spec.run:
            hang = HangWatch(eval_progress(self.layout, self.spec.run, child.pid), s.hang_timeout_s,
                             s.save_hang_timeout_s, self.clock)
        stage, deadline, hung = None, 0.0, False
        next_usage = last_usage = self.clock()
        next_write = last_usage + USAGE_WRITE_S
        while (rc := child.poll()) is None:
            now = self.clock()
            if self.kill_requested and stage != "killed":
                self.log("killing the job's process group (SIGKILL), as the user asked")
                child.signal_group(signal.SIGKILL)
                stage = "killed"
            elif self.stop_requested and stage is None:
                stage, deadline = self.begin_stop(child, now)
            elif stage == "asked" and now >= deadline:
                self.log(f"still running {s.stop_grace_s:g}s after the stop request: SIGTERM to the group")
                child.signal_group(signal.SIGTERM)
                stage, deadline = "term", now + s.kill_grace_s
            elif stage == "term" and now >= deadline:
                self.log(f"still running {s.kill_grace_s:g}s after SIGTERM: SIGKILL to the group")
                child.signal_group(signal.SIGKILL)
                stage = "killed"
            if hang is not None and stage is None and not hung and hang.hung():
                self.log(f"no progress in {self.progress_file_name()} for {now - hang.last_progress:.0f}s "
                         f"(phase {hang.phase}): hung; killing the group")
                child.signal_group(signal.SIGKILL)
                hung = True
            if now >= next_usage:
                self.sample_usage(child.pid, now - last_usage)
                last_usage, next_usage = now, now + USAGE_SAMPLE_S
                if now >= next_write:
                    self.save_state(durable=False)
                    next_write = now + USAGE_WRITE_S
            self.sleep(self.poll_s)
        child.signal_group(signal.SIGKILL)  # leftovers of the group (workers, helpers)
        self.sample_usage(child.pid, self.clock() - last_usage)
        ending = Ending(
            exit_code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None, hung=hung,
            user_stop=stage is not None, phase=hang.phase if hang else None,
        )
        self.state.exit_code, self.state.signal = ending.exit_code, ending.signal
        self.log(f"process ended: {ending.describe()}")
        return ending

    def progress_file_name(self) -> str:
        return "eval_status.json" if self.spec.kind is JobKind.EVAL else "status.json"

    def begin_stop(self, child: ChildProcess, now: float) -> tuple[str, float]:
        s = self.spec.restart
        if self.spec.kind.trains and self.spec.run:
            self.layout.stop_request(self.spec.run).touch()
            self.transition(JobState.STOPPING,
                            f"stop requested: asked the trainer to save and exit (grace {s.stop_grace_s:g}s)")
            return "asked", now + s.stop_grace_s
        self.transition(JobState.STOPPING, "stop requested: SIGTERM to the group")
        child.signal_group(signal.SIGTERM)
        return "term", now + s.kill_grace_s

    def refresh_auto_resume(self) -> None:
        """Pick up a user's change of auto-resume since launch (jobs.toggle_auto_resume)."""
        want = effective_auto_resume(self.layout, self.spec)
        if want != self.policy.settings.auto_resume:
            self.policy.settings = replace(self.policy.settings, auto_resume=want)
            self.log(f"auto-resume turned {'on' if want else 'off'} by the user")

    def wait_backoff(self) -> bool:
        """Sleep out the restart delay; False when a stop arrives meanwhile."""
        while self.policy.remaining_wait() > 0:
            if self.stop_requested:
                return False
            self.sleep(min(self.poll_s, self.policy.remaining_wait()))
        return not self.stop_requested

    def wait_for_writer(self) -> bool:
        """A restart never starts a second writer: while another process holds the run's writer
        lock (e.g. a trainer started by hand), wait for it; False when a stop arrives meanwhile."""
        if not (self.spec.kind.trains and self.spec.run):
            return True
        told = False
        while (holder := writer_lock.holder(self.layout.run_dir(self.spec.run))) is not None:
            if self.stop_requested:
                return False
            if not told:
                self.log(f"run {self.spec.run} is being written by {holder.describe()}: "
                         "the restart waits for it")
                told = True
            self.sleep(self.poll_s)
        return True

    def restart_argv(self, latest: int | None) -> list[str]:
        """Resume from the latest complete checkpoint; a job that cannot resume runs again."""
        if latest is None or not self.spec.resume_argv:
            return list(self.spec.argv)
        return builders.resume_command(self.layout, self.spec.resume_argv, self.spec.run, latest)

    # ------------------------------------------------------------ the run's files

    def latest_checkpoint(self) -> int | None:
        return builders.latest_step(self.layout, self.spec.run) if self.spec.run else None

    def target_step(self) -> int | None:
        return builders.run_target(self.layout, self.spec.run) if self.spec.run else None

    def remove_unused_run_folder(self) -> None:
        """A new run refused at once (bad config) leaves the empty folder `launch` made: remove
        it (rmdir removes only an empty folder), so a typo does not leave a run behind."""
        if self.spec.kind is JobKind.TRAIN and self.spec.run:
            try:
                self.layout.run_dir(self.spec.run).rmdir()
            except OSError:
                return
            self.log(f"removed the unused, empty run folder {self.spec.run}")

    def clear_stop_request(self) -> None:
        """A stop request left from an earlier session would stop this one at its first step."""
        if self.spec.kind.trains and self.spec.run:
            try:
                self.layout.stop_request(self.spec.run).unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ state and log

    def sample_usage(self, child_pid: int, dt: float) -> None:
        snap = (self.sampler or gpu_mod.default_sampler()).sample()
        if snap.gpus:
            self.usage.add(snap, tree_pids(child_pid), max(0.0, dt))
        self.state.usage = self.usage.result()

    def transition(self, new: JobState, reason: str | None) -> None:
        self.state.state = new
        if reason:
            self.state.note(reason)
            self.log(f"{new.value}: {reason}")
        self.save_state(final=new.final)

    def save_state(self, *, durable: bool = True, final: bool = False) -> None:
        """The keeper's record, through records.update_state; what others added meanwhile (a
        supervise note: resumed_by) is kept. When the disk is full a passing state is skipped,
        and a final one is tried again until it is written: the job's end is recorded truthfully
        once space returns, never left as running with its keeper gone."""
        def merge(current: StateFile | None) -> StateFile:
            if current is not None and current.resumed_by and not self.state.resumed_by:
                self.state.resumed_by = current.resumed_by
            return self.state

        delay, told = 1.0, False
        while True:
            try:
                update_state(self.layout, self.job_id, merge, durable=durable)
                return
            except OSError as e:
                if not disk.is_full(e):
                    raise
                if not final:
                    return  # a passing state: the next one, or the final one, says more
                if not told:
                    where = self.layout.job_state(self.job_id)
                    problem = disk.describe(where)
                    try:
                        sys.stderr.write(f"rltui keeper: cannot record the job's end: {problem}; "
                                         "trying again until it can\n")
                        sys.stderr.flush()
                    except OSError:
                        pass
                    told = True
                self.sleep(delay)
                delay = min(delay * 2, 30.0)

    def finish(self, final: JobState, reason: str) -> JobState:
        self.state.ended_at = time.time()
        self.state.usage = self.usage.result()
        self.transition(final, reason)
        if self.on_end is not None:
            self.on_end(self)
        return final

    def log(self, message: str) -> None:
        line = f"{output.KEEPER_NOTE}{time.strftime('%H:%M:%S')}] {message}\n".encode("utf-8", "replace")
        try:
            fd = os.open(str(self.layout.job_log(self.job_id)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            return  # a full disk: the state file, retried, says what matters
        try:
            os.write(fd, line)
        except OSError:
            pass
        finally:
            os.close(fd)


def after_end(keeper: Keeper) -> None:
    """Start follow-ups of a job that succeeded, then queued jobs that its GPUs may now serve."""
    from rltui.jobs import control

    layout, spec, state = keeper.layout, keeper.spec, keeper.state
    if state.state is JobState.SUCCEEDED and spec.run:
        for follow in spec.followups:
            if follow.kind is not JobKind.EVAL:
                continue
            try:
                gpus = [state.gpus[0]] if state.gpus else 0
                fspec = builders.eval_job(layout, spec.run, dataset=follow.dataset, gpus=gpus)
                fjob = control.launch(layout, fspec.with_changes(parent_job=spec.id), check_usage=False)
            except Exception as e:  # a follow-up that cannot start must not hide the job's success
                keeper.log(f"could not start the follow-up eval: {e}")
                continue
            state.followup_jobs.append(fjob.id)
            keeper.log(f"started follow-up job {fjob.id}: {fspec.title}")
        keeper.save_state()
    try:
        started = control.start_queued(layout)
    except Exception as e:
        keeper.log(f"could not start queued jobs: {e}")
        return
    for job_id in started:
        keeper.log(f"started queued job {job_id}")


def start_live_archive(keeper: Keeper) -> None:
    """An `--archive` training job: start its live archive beside it (a `sync --action follow`
    job that watches this job and makes its last pass after it ends); never in the trainer."""
    from rltui.jobs import builders, control

    spec = keeper.spec
    if spec.archive is None or not spec.run or not spec.kind.trains:
        return
    try:
        aspec = builders.sync_job(keeper.layout, "follow", spec.run, follow_job=spec.id,
                                  archive=spec.archive)
        ajob = control.launch(keeper.layout, aspec.with_changes(parent_job=spec.id), check_usage=False)
    except Exception as e:  # the training job runs on; status shows the run as not archived
        keeper.log(f"could not start the live archive: {e}")
        return
    keeper.state.followup_jobs.append(ajob.id)
    keeper.log(f"started live archive job {ajob.id}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rltui.jobs.keeper", description=__doc__.split("\n")[0])
    parser.add_argument("--detach", action="store_true", help="fork and return at once")
    parser.add_argument("job_dir", type=Path)
    args = parser.parse_args(argv)
    job_dir = args.job_dir.absolute()
    layout = Layout(job_dir.parent.parent)
    if args.detach and os.fork() != 0:
        os._exit(0)
    try:
        keeper = Keeper(layout, job_dir.name, on_end=after_end)
    except (FileNotFoundError, DamagedFile) as e:
        sys.stderr.write(f"rltui keeper: cannot read the job: {e}\n")
        return 2
    keeper.install_signal_handlers()
    start_live_archive(keeper)
    try:
        final = keeper.run()
    except Exception as e:
        st = keeper.state
        ownership.signal_job_group(keeper.job_id, st.pgid, st.pgid_start, st.boot_time, signal.SIGKILL)
        keeper.state.ended_at = time.time()
        keeper.transition(JobState.FAILED, f"keeper error: {type(e).__name__}: {e}")
        raise
    update_store(keeper)
    return 0 if final is JobState.SUCCEEDED else 1


def update_store(keeper: Keeper) -> None:
    """The job's run and usage into the metrics store (rltui.runs.store) once the job's end is
    recorded and its follow-ups started; a store that cannot be written only logs a line."""
    from rltui.runs.ingest import ingest_quietly

    runs = [keeper.spec.run] if keeper.spec.run else []
    ingest_quietly(keeper.layout.root, runs=runs, jobs=[keeper.job_id])


if __name__ == "__main__":
    sys.exit(main())
