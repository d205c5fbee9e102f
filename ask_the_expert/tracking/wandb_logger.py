"""Weights & Biases as the default logger, never a point of failure.

- Mode ``auto`` logs online with credentials and offline without; a run that cannot start online (no network, a
  stale or missing API key, a server that does not answer within ``init_timeout``) falls back to offline with one
  line on stderr that says why and how to upload the run later, unless ``require_online`` asks for an error.
- Empty or unparsable ``WANDB_*`` environment variables are removed before wandb reads them (see
  ``sanitize_wandb_environment``), so a bad variable never ends a run with a wandb traceback.
- ``wandb_run_id_from_checkpoint`` reads back the run that callbacks.wandb_logging.WandbRunInCheckpoint stored in a
  checkpoint, so that a fit resumed from that checkpoint continues the same W&B run (``SuiteWandbLogger(id=...)``).
"""

from __future__ import annotations

import netrc
import os
import sys
import time
import typing
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from ask_the_expert.utils.errors import SuiteError
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


@rank_zero_only
def _announce_offline(save_dir: str) -> None:
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
        project, group, job_type, tags, name: the W&B run's fields.
        save_dir: where the ``wandb/`` run folders and (through Lightning) checkpoints go.
        mode: ``auto`` (default), ``online``, ``offline`` or ``disabled``; see ``resolve_wandb_mode``.
        log_model: Lightning's checkpoint upload (kept as artifacts in an offline run until it is synced).
        id: the W&B run id to continue (``resume="allow"``, Lightning's default): pass
            ``wandb_run_id_from_checkpoint(ckpt_path)`` when a fit is resumed from a checkpoint.
        init_timeout: seconds an online start may wait for the server (``wandb.Settings(init_timeout=...)``; it
            takes precedence over ``WANDB_INIT_TIMEOUT``).
        require_online: raise a ``SuiteError`` instead of falling back to offline, also when ``auto`` finds no
            credentials.
        kwargs: passed to ``WandbLogger`` and on to ``wandb.init``.

    The run is created lazily on rank zero by ``experiment`` (Lightning asks for it before ``setup``), which is
    where the fallback happens; everything else (hyperparameters, metrics, ``watch``, checkpoint artifacts,
    ``SaveConfigToRun``) goes through ``experiment`` and so uses the offline run after a fallback.
    """

    def __init__(
        self,
        project: str = "ask-the-expert",
        save_dir: str = "runs",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        mode: WandbMode = "auto",
        log_model: bool = False,
        id: str | None = None,
        init_timeout: float = 15.0,
        require_online: bool = False,
        **kwargs: Any,
    ) -> None:
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
        if resolved == "offline":
            _announce_offline(save_dir)
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
            **kwargs,
        )
        if self._wandb_init.get("resume") is None:  # LightningCLI passes every wandb.init argument, resume=None too
            self._wandb_init["resume"] = "allow"  # WandbLogger's default: continue the run ``id`` names, if any
        self._init_timeout = float(init_timeout)
        self._require_online = require_online

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

    def _online_settings(self) -> Any:
        """The caller's ``settings`` (if any) with our ``init_timeout``."""
        import wandb

        given = self._wandb_init.get("settings")
        if isinstance(given, wandb.Settings):
            settings = given.model_copy()
            settings.init_timeout = self._init_timeout
            return settings
        return wandb.Settings(**dict(given or {}), init_timeout=self._init_timeout)

    def _start_run(self) -> Any:
        """``wandb.init``; an online start that fails becomes an offline run (or a SuiteError)."""
        import wandb

        sanitize_wandb_environment()
        Path(self._save_dir or ".").mkdir(parents=True, exist_ok=True)
        if self._wandb_init.get("anonymous") is None:  # WandbLogger passes None, which wandb 0.31 warns about
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("mode") not in _ONLINE_MODES:
            return wandb.init(**self._wandb_init)
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
        self._wandb_init["mode"] = "offline"  # later re-creations (spawn, attach) must not try online again
        run = wandb.init(**self._wandb_init)
        folder = Path(run.dir).parent if getattr(run, "dir", None) else Path(self._save_dir or ".") / "wandb"
        _warn(
            f"W&B: could not start an online run ({reason}; gave up after {waited:.1f} s), logging offline into "
            f"'{folder}' instead. Upload later with: wandb sync {self._save_dir}/wandb/offline-run-*"
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
