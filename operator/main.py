"""`kascade operator`: Kopf's own `kopf run`, with the Kascade handlers and a liveness endpoint.

    kascade operator --namespace llm                  # one namespace (repeatable)
    kascade operator --all-namespaces --standalone    # cluster-wide, no peering

The handlers live in `kascade.operator.handlers`; this module only checks the
configuration first (so a bad KASCADE_* variable is a one-line message, not a
traceback from inside Kopf) and builds the `kopf run` command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

HANDLERS_MODULE = "kascade.operator.handlers"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def kopf_run_args(
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    liveness: str | None = DEFAULT_LIVENESS,
    standalone: bool = False,
    verbose: bool = False,
    debug: bool = False,
    log_format: str = "full",
) -> list[str]:
    """The arguments of `kopf run` for these options. Raises ValueError for a contradiction."""
    if namespaces and all_namespaces:
        raise ValueError("give either --namespace (one or more) or --all-namespaces, not both")
    if not namespaces and not all_namespaces:
        raise ValueError("give the namespace(s) to watch with --namespace NS, or --all-namespaces")
    args = ["run", "--module", HANDLERS_MODULE, "--log-format", log_format]
    if all_namespaces:
        args.append("--all-namespaces")
    for namespace in namespaces:
        args += ["--namespace", namespace]
    if liveness:
        args += ["--liveness", liveness]
    if standalone:
        args.append("--standalone")
    if debug:
        args.append("--debug")
    elif verbose:
        args.append("--verbose")
    return args


def check_configuration() -> str | None:
    """A message naming what is wrong with the KASCADE_* variables, or None when they are usable."""
    from kascade.operator.settings import OperatorSettings, SettingsError

    try:
        OperatorSettings.from_env()
    except SettingsError as error:
        return str(error)
    return None


def run_operator(
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    liveness: str | None = DEFAULT_LIVENESS,
    standalone: bool = False,
    verbose: bool = False,
    debug: bool = False,
    log_format: str = "full",
) -> int:
    """Run the operator until it is stopped (SIGINT/SIGTERM); the exit status."""
    try:
        args = kopf_run_args(
            namespaces=namespaces,
            all_namespaces=all_namespaces,
            liveness=liveness,
            standalone=standalone,
            verbose=verbose,
            debug=debug,
            log_format=log_format,
        )
    except ValueError as error:
        print(f"kascade operator: {error}", file=sys.stderr)
        return 2
    problem = check_configuration()
    if problem is not None:
        print(f"kascade operator: {problem}", file=sys.stderr)
        return 2
    try:
        import kopf.cli
    except ImportError:
        print("kascade operator: Kopf is not installed; pip install 'kascade[operator]'", file=sys.stderr)
        return 2
    try:
        kopf.cli.main.main(args=args, prog_name="kascade operator", standalone_mode=False)
    except KeyboardInterrupt:
        return 0
    return 0
