"""`mtl`: every pipeline stage from the shell, without Airflow.

Each command prints its stage's result dict as JSON on stdout. A pipeline error (pipeline.errors.MTLError:
bad config, data that breaks the contract, a locked date...) prints its message on stderr and exits 2.
Stage modules (torch, polars, GX, MLflow) are imported inside the handlers so `mtl --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import MTLError

EXIT_ERROR = 2


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration")
    g.add_argument("--home", default=None, help="pipeline home folder (default: $MTL_HOME or .mtl)")
    g.add_argument("--config", default=None, metavar="FILE", help="YAML config file")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set model.name=ple (repeatable)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _cfg(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides, home=args.home)


def _run_id(args: argparse.Namespace) -> str:
    from pipeline.errors import ConfigError
    from pipeline.paths import parse_date

    if getattr(args, "run_id", None):
        return args.run_id
    if getattr(args, "date", None):
        return parse_date(args.date).isoformat()
    raise ConfigError("give --date D (the run id defaults to the date) or --run-id ID")


def cmd_generate(args):
    from pipeline.data.generate import generate

    return generate(args.out, days=args.days, impressions_per_day=args.impressions_per_day, users=args.users,
                    items=args.items, seed=args.seed, start_date=args.start_date, long_tail=args.long_tail,
                    popularity_drift=args.popularity_drift, new_items=args.new_items, oracle_out=args.oracle_out)


def cmd_ingest(args):
    from pipeline.data.ingest import ingest

    return ingest(_cfg(args), _need(args, "landing"), _need(args, "date"), args.run_id)


def cmd_validate(args):
    from pipeline.data.validate import validate

    return validate(_cfg(args), _need(args, "date"), args.run_id)


def cmd_aggregate(args):
    from pipeline.features.aggregates import build_day_aggregates

    return build_day_aggregates(_cfg(args), _need(args, "date"))


def cmd_features(args):
    from pipeline.features.build import build_features

    return build_features(_cfg(args), _need(args, "date"), args.run_id)


def cmd_train(args):
    from pipeline.run import model_names
    from pipeline.training.launch import launch

    cfg, run_id = _cfg(args), _run_id(args)
    names = [args.name] if args.name else model_names(cfg)
    return {name: launch(cfg, run_id, name=name, resume=args.resume) for name in names}


def cmd_evaluate(args):
    from pipeline.evaluation.evaluate import evaluate

    return evaluate(_cfg(args), _run_id(args))


def cmd_register(args):
    from pipeline.release import register

    cfg = _cfg(args)
    if args.run_dir:
        return register(cfg, run_dir=args.run_dir)
    return register(cfg, run_id=_run_id(args))


def cmd_run(args):
    from pipeline.run import run_all

    return run_all(_cfg(args), _need(args, "landing"), _need(args, "date"), args.run_id)


def cmd_show(args):
    from pipeline.run import brief, run_summary

    summary = run_summary(_cfg(args), _run_id(args))
    return brief(summary) if args.brief else summary


def cmd_score(args):
    from pipeline.serving.score import score

    return score(_cfg(args), args.model, args.landing, args.date, args.out)


def cmd_import(args):
    from pipeline.data.adapters import import_dataset

    return import_dataset(args.name, args.src, args.out)


def cmd_promote_champion(args):
    from pipeline.release import promote_champion

    cfg = _cfg(args)
    if args.run_dir:
        return promote_champion(cfg, run_dir=args.run_dir)
    return promote_champion(cfg, run_id=_run_id(args))


def cmd_promote(args):
    from pipeline.registry import promote

    return promote(_cfg(args), args.version, args.why)


def cmd_rollback(args):
    from pipeline.registry import rollback

    return rollback(_cfg(args), args.why)


def _need(args: argparse.Namespace, name: str) -> Any:
    from pipeline.errors import ConfigError

    value = getattr(args, name, None)
    if not value:
        raise ConfigError(f"mtl {args.command}: --{name.replace('_', '-')} is required")
    return value


def _stage_args(p: argparse.ArgumentParser, landing: bool = True, date: bool = True) -> None:
    if landing:
        p.add_argument("--landing", metavar="DIR", help="landing folder in the raw data contract")
    if date:
        p.add_argument("--date", metavar="YYYY-MM-DD", help="logical date D")
    p.add_argument("--run-id", default=None, help="run folder name (default: the date)")


def _add_data_commands(sub, common) -> None:
    p = sub.add_parser("generate", parents=[common], help="write a synthetic landing folder")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--impressions-per-day", type=int, default=3000)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=150)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start-date", default=None, metavar="YYYY-MM-DD")
    p.add_argument("--long-tail", type=float, default=0.0, metavar="SHARE",
                   help="share of titles reworded once and of each day's search queries reworded afresh "
                        "(synonyms, word order, extra words, typos); 0 = off")
    p.add_argument("--popularity-drift", type=float, default=0.0, metavar="STEP",
                   help="daily random-walk step on each item's log popularity; 0 = off")
    p.add_argument("--new-items", type=float, default=0.0, metavar="SHARE",
                   help="share of items that first appear on a random later day; 0 = off")
    p.add_argument("--oracle-out", default=None, metavar="DIR",
                   help="also write the true probabilities the labels were drawn with, per day, to "
                        "DIR/dt=D/part-0.parquet (event_id, p_click, p_cart_given_click, p_purchase_given_click); "
                        "DIR must lie outside --out (the landing holds only contract files); the landing is the "
                        "same with or without it")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("import", parents=[common], help="convert a public/real dataset into a landing folder")
    p.add_argument("name", help="adapter name, e.g. hillstrom or ali-ccp")
    p.add_argument("src", help="source file or folder")
    p.add_argument("--out", required=True, metavar="LANDING")
    p.set_defaults(func=cmd_import)
    for name, func, text in (
        ("ingest", cmd_ingest, "stage landing day D (and unseen earlier days) for validation"),
        ("validate", cmd_validate, "validate staged days; publish them into the lake on pass"),
        ("features", cmd_features, "build train/valid/test feature files for the windows ending at D"),
    ):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        _stage_args(p)
        p.set_defaults(func=func)
    text = ("write the history count tables of published lake day D once under lake/_aggregates/dt=D/ (a no-op "
            "when they match the day's fingerprint and items snapshot; features builds missing days itself)")
    p = sub.add_parser("aggregate", parents=[common], help=text, description=text)
    p.add_argument("--date", metavar="YYYY-MM-DD", help="the lake day D")
    p.set_defaults(func=cmd_aggregate)


def _add_model_commands(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train the MTL model and/or the baselines (DNN and LightGBM)")
    _stage_args(p)
    p.add_argument("--name", default=None, help="mtl, baseline_<task> (single-task DNN) or gbdt_<task> (LightGBM) "
                   "(default: mtl and every enabled baseline)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", parents=[common], help="test-window metrics for the MTL model and baselines")
    _stage_args(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("register", parents=[common], help="log the run to MLflow, register it as challenger, "
                       "record the gate (champion moves with promote-champion)")
    _stage_args(p)
    p.add_argument("--run-dir", default=None, metavar="DIR", help="register a saved run folder")
    p.set_defaults(func=cmd_register)
    text = ("move champion to the run's registered version if the gate passes against the champion as it is "
            "now (what the DAG's promote task does); a refusal exits 2 with the gate lines")
    p = sub.add_parser("promote-champion", parents=[common], help=text, description=text)
    _stage_args(p, landing=False)
    p.add_argument("--run-dir", default=None, metavar="DIR", help="a saved run folder")
    p.set_defaults(func=cmd_promote_champion)
    p = sub.add_parser("run", parents=[common], help="every stage for logical date D (what the DAG runs)")
    _stage_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("show", parents=[common], help="what a run left behind: reports, registration, failure")
    _stage_args(p, landing=False)
    p.add_argument("--brief", action="store_true", help="a few human lines instead of JSON")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("score", parents=[common], help="batch-score a landing day with a registered model",
                       description="Score a landing day with a registered model, as `mlflow models serve` would: "
                       "history from the lake of --set serving.history_from=HOME (default: the model's bundled "
                       "snapshot), new titles/queries embedded and cached under serving.text_cache.")
    p.add_argument("--model", required=True, metavar="URI", help="e.g. models:/ecommerce-mtl@champion")
    p.add_argument("--landing", required=True, metavar="DIR")
    p.add_argument("--date", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--out", required=True, metavar="FILE.parquet")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("promote", parents=[common], help="move the champion alias to a version by hand (no gate)")
    p.add_argument("--version", required=True, type=int)
    p.add_argument("--why", required=True, help="reason, stored as a tag with the user")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", parents=[common], help="move the champion alias back to the previous one")
    p.add_argument("--why", required=True, help="reason, stored as a tag with the user")
    p.set_defaults(func=cmd_rollback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl", description="Nightly multi-task learning pipeline for e-commerce funnels.",
        epilog="Config keys: see README 'Configuration'. Errors in config or data exit with status 2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    _add_data_commands(sub, common)
    _add_model_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], Any] = args.func
    try:
        # Libraries print progress on stdout (MLflow's run links...): keep stdout for the JSON result only.
        with contextlib.redirect_stdout(sys.stderr):
            result = handler(args)
    except MTLError as exc:
        print(f"mtl {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(result if isinstance(result, str) else json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
