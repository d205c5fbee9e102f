"""Weights & Biases as the default logger, never a point of failure.

- Mode ``auto`` logs online with credentials and offline without; a run that cannot start online (no network, a
  stale or missing API key, a server that does not answer within ``init_timeout``) falls back to offline with one
  line on stderr that says why and how to upload the run later, unless ``require_online`` asks for an error.
- Empty or unparsable ``WANDB_*`` environment variables are removed before wandb reads them (see
  ``sanitize_wandb_environment``), so a bad variable never ends a run with a wandb traceback.
- The fallback is decided once per process: after one online start failed, every later run of the process (the
  experts of ate-train-experts, the steps of ate-pipeline) logs offline at once instead of waiting out
  ``init_timeout`` again.
- Where the runs go (one rule, ``wandb_dir``): ``<output folder>/wandb``, the output folder being the command's
  ``--out`` (``ate-train``: ``--trainer.default_root_dir``; ``ate-deploy export``: the folder that holds the bundle,
  which holds only its own files; commands run by ate-train-experts or ate-pipeline: their caller's ``--out``),
  unless the logger's ``save_dir`` or ``WANDB_DIR`` names another.
- ``wandb_run_id_from_checkpoint`` reads back the run that callbacks.wandb_logging.WandbRunInCheckpoint stored in a
  checkpoint, so that a fit resumed from that checkpoint continues the same W&B run (``SuiteWandbLogger(id=...)``).
"""

from __future__ import annotations

import netrc
import os
import sys
import time
import typing
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import WandbOptions
from lightning_modules.checkpoints import load_checkpoint_file

WandbMode = Literal["auto", "online", "offline", "disabled"]
# The values wandb 0.31 accepts for WANDB_MODE (read from wandb.Settings when possible, see _valid_wandb_modes).
_WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")
# WANDB_MODE spellings that mean the same as one of ours.
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
# Modes that need the W&B server when the run starts.
_ONLINE_MODES = ("online", "shared")
# Netrc hosts that hold W&B credentials (wandb >= 0.31 logs in to api.forge.coreweave.com by default).
_WANDB_HOST_MARKERS = ("wandb", "forge.coreweave.com")
# Where callbacks.wandb_logging.WandbRunInCheckpoint puts the run in a checkpoint.
CHECKPOINT_KEY = "wandb_run"
# Why an online start failed earlier in this process (None: none failed); later runs then start offline at once.
_online_failure: str | None = None


def wandb_dir(output_folder: str | Path) -> str:
    """The folder whose ``wandb/`` holds a command's runs: ``WANDB_DIR`` when set, else the command's output
    folder (see the module docstring for which folder that is)."""
    return os.environ.get("WANDB_DIR") or str(output_folder)


def _valid_wandb_modes() -> tuple[str, ...]:
    """The values of ``wandb.Settings.mode`` in the installed wandb, or the 0.31 list."""
    try:
        import wandb

        modes = typing.get_args(wandb.Settings.model_fields["mode"].annotation)
    except Exception:  # a wandb that is laid out differently: the list checked against 0.31 is still right
        return _WANDB_MODES
    return tuple(str(mode) for mode in modes) or _WANDB_MODES


def _wandb_accepts(name: str, value: str) -> bool:
    """True if wandb's settings parse ``name=value`` (the same call wandb makes on the whole environment)."""
    import wandb

    try:
        wandb.Settings().update_from_env_vars({name: value})
    except Exception:
        return False
    return True


def sanitize_wandb_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove the ``WANDB_*`` variables wandb cannot parse; return their names.

    wandb reads every ``WANDB_<SETTING>`` variable into its pydantic settings when it is first set up and raises
    a ``ValidationError`` traceback on a value it cannot parse: an empty ``WANDB_SILENT=``, ``WANDB_QUIET=``,
    ``WANDB_CONSOLE=``, ``WANDB_MODE=``, ``WANDB_RESUME=``, ``WANDB_RUN_ID=``, ``WANDB_INIT_TIMEOUT=``,
    ``WANDB_BASE_URL=``, ``WANDB_DISABLE_CODE=``/``WANDB_DISABLE_GIT=``/``WANDB_SAVE_CODE=`` and the other
    boolean, numeric and choice settings (``WANDB_SHOW_*``, ``WANDB_SYNC_TENSORBOARD``, ``WANDB__DISABLE_STATS``,
    ``WANDB__DISABLE_META``, ...), or ``WANDB_SILENT=maybe``. Each variable is checked with wandb's own parser, so
    the list follows the installed wandb. Empty values are dropped quietly (an empty variable usually means
    "unset"); a non-empty value wandb rejects is dropped with one warning line on stderr.

    ``WANDB_MODE`` is the exception: a non-empty invalid value (``WANDB_MODE=onlin``) raises a ``SuiteError``
    naming the variable and its valid values, since guessing the intended mode would be wrong either way.

    Variables that only wandb's sweep agent and CLI read (``WANDB_AGENT_*``, ``WANDB_ARGS``) are not checked.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("WANDB_MODE")
    if mode is not None and mode.strip() and mode not in _valid_wandb_modes():
        raise SuiteError(
            f"The environment variable WANDB_MODE={mode!r} is not a W&B mode. Set it to one of "
            f"{', '.join(_valid_wandb_modes())}, or unset it and choose the mode with the logger's mode argument "
            "(auto, online, offline or disabled; e.g. --trainer.logger.init_args.mode offline)."
        )
    removed = []
    for name, value in sorted(environ.items()):
        if not name.startswith("WANDB_") or _wandb_accepts(name, value):
            continue
        del environ[name]
        removed.append(name)
        if value.strip():
            _warn_rank_zero(f"W&B: ignoring the environment variable {name}={value!r}: wandb cannot parse that value.")
    return removed


def has_wandb_credentials() -> bool:
    """True if ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` or a netrc entry (``wandb login``) for a W&B host
    provides credentials. A present key may still be stale; the online start then falls back to offline."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC") or None).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    markers = list(_WANDB_HOST_MARKERS)
    if base_url := os.environ.get("WANDB_BASE_URL"):
        markers.append(urlsplit(base_url).netloc or base_url)
    return any(marker in host for host in hosts for marker in markers)


def resolve_wandb_mode(mode: WandbMode) -> str:
    """``auto`` follows ``WANDB_MODE`` if set (``dryrun`` read as offline, ``run`` as online), else online with
    credentials and offline without. An invalid ``WANDB_MODE`` is a ``SuiteError``."""
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE") or ""
    if env_mode.strip() and env_mode not in _valid_wandb_modes():
        sanitize_wandb_environment()  # raises the SuiteError that names the variable
    if env_mode.strip():
        return _MODE_ALIASES.get(env_mode, env_mode)
    return "online" if has_wandb_credentials() else "offline"


def _warn(message: str) -> None:
    """One plain line on stderr (no rich: its wrapping would split the line in a log file)."""
    print(message, file=sys.stderr, flush=True)


# Every rank cleans its own environment; only rank zero says so.
_warn_rank_zero = rank_zero_only(_warn)


# The folders _announce_offline has named in this process: the checks that build a run's logger without starting it
# (ate-train-experts, ate-pipeline) would repeat the line for every run.
_announced: set[str] = set()


@rank_zero_only
def _announce_offline(save_dir: str) -> None:
    if save_dir in _announced:
        return
    _announced.add(save_dir)
    _warn(
        f"W&B: logging offline into '{save_dir}/wandb' (no credentials, or offline requested). "
        f"Upload later with: wandb sync {save_dir}/wandb/offline-run-*"
    )


def _first_line(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened: enough to say why, short enough for one line."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _skip_identity_lookup() -> None:
    """Stop wandb from asking the server who the API key belongs to before ``wandb.init``.

    wandb 0.31 does that with its own fixed 5 s timeout, twice when the server is unreachable, outside
    ``init_timeout``; the answer only feeds the "Currently logged in as" line and account defaults such as
    code saving. Skipping it (the ``x_disable_viewer`` setting, process wide) bounds the wait by ``init_timeout``.
    """
    import wandb

    if "x_disable_viewer" in wandb.Settings.model_fields:
        wandb.setup(wandb.Settings(x_disable_viewer=True))


class SuiteWandbLogger(WandbLogger):
    """WandbLogger that never fails a run: an online start that fails falls back to offline and says so.

    Args:
        project, group, job_type, tags, name: the W&B run's fields (ate-train derives those left unset:
            ask_the_expert.tracking.run_identity).
        preset: the preset or experiment the run belongs to (ate-pipeline sets it); the derived name and group
            start with it.
        save_dir: where the ``wandb/`` run folders and (through Lightning) checkpoints go (default: ``wandb_dir``
            of the working directory; ate-train sets ``--trainer.default_root_dir``).
        mode: ``auto`` (default), ``online``, ``offline`` or ``disabled``; see ``resolve_wandb_mode``.
        log_model: Lightning's checkpoint upload (kept as artifacts in an offline run until it is synced).
        id: the W&B run id to continue (``resume="allow"``, Lightning's default): pass
            ``wandb_run_id_from_checkpoint(ckpt_path)`` when a fit is resumed from a checkpoint.
        init_timeout: seconds an online start may wait for the server (``wandb.Settings(init_timeout=...)``; it
            takes precedence over ``WANDB_INIT_TIMEOUT``).
        require_online: raise a ``SuiteError`` instead of falling back to offline, also when ``auto`` finds no
            credentials.
        kwargs: passed to ``WandbLogger`` and on to ``wandb.init``.

    An offline run is quiet (``silent``: no wandb banner, no end-of-run summary): the logger says in one line where it
    is and how to upload it. The run is created lazily on rank zero by ``experiment`` (Lightning asks for it before
    ``setup``), which is where the fallback happens; everything else (hyperparameters, metrics, ``watch``, checkpoint
    artifacts, ``SaveConfigToRun``) goes through ``experiment`` and so uses the offline run after a fallback.
    """

    def __init__(
        self,
        project: str = "ask-the-expert",
        save_dir: str | None = None,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        mode: WandbMode = "auto",
        log_model: bool = False,
        id: str | None = None,
        init_timeout: float = 15.0,
        require_online: bool = False,
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        import wandb

        if not init_timeout > 0:
            raise SuiteError(f"SuiteWandbLogger: init_timeout must be positive (seconds), got {init_timeout}.")
        sanitize_wandb_environment()
        if kwargs.get("offline"):  # Lightning's own switch; our mode is passed to wandb.init and would win
            mode = "offline"
        resolved = resolve_wandb_mode(mode)
        if require_online and resolved not in _ONLINE_MODES:
            if mode != "auto":
                why = f"mode={mode!r}"
            elif (os.environ.get("WANDB_MODE") or "").strip():
                why = f"mode='auto' follows the environment variable WANDB_MODE={os.environ['WANDB_MODE']!r}"
            else:
                why = "mode='auto' found no W&B credentials"
            raise SuiteError(
                f"SuiteWandbLogger: require_online is set but the W&B run would be '{resolved}' ({why}). Log in "
                "with `wandb login` or set WANDB_API_KEY, unset WANDB_MODE or set mode online, or drop "
                "require_online to log offline."
            )
        save_dir = save_dir or wandb_dir(".")
        if resolved == "offline":
            _announce_offline(save_dir)
        # Only the settings that are set: a whole wandb.Settings object would reset the process's own (the
        # skipped identity lookup) and makes an offline start several seconds slower.
        given = kwargs.pop("settings", None)
        given = given.model_dump(exclude_unset=True) if isinstance(given, wandb.Settings) else dict(given or {})
        settings = given
        super().__init__(
            project=project,
            save_dir=save_dir,
            name=name,
            group=group,
            job_type=job_type,
            tags=tags,
            mode=resolved,
            log_model=log_model,
            id=id,
            settings=settings,
            **kwargs,
        )
        if self._wandb_init.get("resume") is None:  # LightningCLI passes every wandb.init argument, resume=None too
            self._wandb_init["resume"] = "allow"  # WandbLogger's default: continue the run ``id`` names, if any
        self._init_timeout = float(init_timeout)
        self._require_online = require_online
        self.preset = preset

    @property
    def run_mode(self) -> str:
        """The mode the run uses (or will use): ``offline`` after a fallback."""
        return str(self._wandb_init.get("mode"))

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The wandb run, created on first access (rank zero only) with the offline fallback."""
        import wandb

        if self._experiment is None and wandb.run is None and getattr(self, "_attach_id", None) is None:
            self._experiment = self._start_run()
            if getattr(self._experiment, "define_metric", None):  # as WandbLogger does for the runs it creates
                if self._wandb_init.get("sync_tensorboard"):
                    self._experiment.define_metric("*", step_metric="global_step")
                else:
                    self._experiment.define_metric("trainer/global_step")
                    self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return WandbLogger.experiment.fget(self)  # reuse of a running run, attach after spawn

    def _offline_init(self) -> dict[str, Any]:
        """``wandb.init``'s arguments for an offline run: quiet (no banner, no end-of-run summary; the logger says
        in one line where the run is and how to upload it)."""
        return {**self._wandb_init, "settings": {**self._wandb_init["settings"], "silent": True}}

    def _online_settings(self) -> dict[str, Any]:
        """The run's ``settings`` with our ``init_timeout``."""
        return {**self._wandb_init["settings"], "init_timeout": self._init_timeout}

    def _start_run(self) -> Any:
        """``wandb.init``; an online start that fails becomes an offline run (or a SuiteError)."""
        import wandb

        global _online_failure

        sanitize_wandb_environment()
        Path(self._save_dir or ".").mkdir(parents=True, exist_ok=True)
        if self._wandb_init.get("anonymous") is None:  # WandbLogger passes None, which wandb 0.31 warns about
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("mode") not in _ONLINE_MODES:
            return wandb.init(**self._offline_init())
        if _online_failure is not None and not self._require_online:
            return self._start_offline(f"an online start failed earlier in this process ({_online_failure})")
        _skip_identity_lookup()
        started = time.monotonic()
        try:
            return wandb.init(**{**self._wandb_init, "settings": self._online_settings()})
        except Exception as err:  # wandb raises UsageError, CommError, AuthenticationError, TimeoutError, ...
            reason, waited = _first_line(err), time.monotonic() - started
            if wandb.run is not None:  # not seen with 0.31, but a half-started run must not be reused
                wandb.finish(exit_code=1)
            if self._require_online:
                raise SuiteError(
                    f"W&B could not start an online run for project '{self._project}' after {waited:.1f} s "
                    f"({reason}), and require_online is set. Check the network and the credentials (`wandb login` "
                    "or WANDB_API_KEY), raise init_timeout for a slow server, or drop require_online to log "
                    "offline and upload the run later with `wandb sync`."
                ) from err
        _online_failure = reason
        return self._start_offline(f"could not start an online run ({reason}; gave up after {waited:.1f} s)")

    def _start_offline(self, why: str) -> Any:
        """The offline run that replaces an online start, with one line on stderr that says why and where."""
        import wandb

        self._wandb_init["mode"] = "offline"  # later re-creations (spawn, attach) must not try online again
        run = wandb.init(**self._offline_init())
        folder = Path(run.dir).parent if getattr(run, "dir", None) else Path(self._save_dir or ".") / "wandb"
        _warn(
            f"W&B: {why}, logging offline into '{folder}' instead. Upload later with: wandb sync "
            f"{self._save_dir}/wandb/offline-run-*"
        )
        return run


def wandb_run_from_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """What ``WandbRunInCheckpoint`` stored in the checkpoint at ``path``, or None (no such entry, or a file that
    cannot be read safely: the checkpoint check elsewhere reports that). Memory-maps the file, so it is cheap."""
    try:
        checkpoint = load_checkpoint_file(Path(path), "--ckpt_path")
    except SuiteError:
        return None
    info = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return dict(info) if isinstance(info, dict) else None


def wandb_run_id_from_checkpoint(path: str | Path) -> str | None:
    """The W&B run id stored in the checkpoint at ``path`` (see ``wandb_run_from_checkpoint``), or None."""
    run_id = (wandb_run_from_checkpoint(path) or {}).get("run_id")
    return run_id if isinstance(run_id, str) and run_id else None


def command_logger(
    options: WandbOptions,
    output_folder: str | Path,
    identity: Mapping[str, str],
    run_id: str,
    job_type: str,
    tags: Sequence[str],
    **kwargs: Any,
) -> SuiteWandbLogger | None:
    """The W&B logger of a command other than ate-train (evaluate, export, the pipeline's summary), or None with
    ``mode: disabled``: ``identity``'s name and group (ask_the_expert.tracking.run_identity) unless ``options`` set
    them, the run ``run_id`` (the one the derived name ends with), the folder ``options.dir`` or ``wandb_dir``."""
    if resolve_wandb_mode(options.mode) == "disabled":
        return None
    return SuiteWandbLogger(
        project=options.project,
        save_dir=options.dir or wandb_dir(output_folder),
        name=options.name or identity["name"],
        group=options.group or identity["group"],
        job_type=job_type,
        tags=[*tags, *options.tags],
        mode=options.mode,
        require_online=options.require_online,
        id=run_id,
        preset=options.preset,
        **kwargs,
    )
