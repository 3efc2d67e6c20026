"""Command line.

  unified-rlhf list | show NAME | verify [--all | NAMES] [--objective FILE.py:NAME]
  unified-rlhf train --method NAME [--config FILE] [--max-steps N] [--out DIR] [--resume | --overwrite]
  unified-rlhf train --method "dpo+0.2*sft" ...       (a weighted sum of objectives; show and verify take it too)
  unified-rlhf train --objective FILE.py:NAME ...      (your own objective, e.g. from objective_from_sympy)
  unified-rlhf train --resume --out DIR                (continue a run with its saved settings)
  unified-rlhf evaluate DIR
  unified-rlhf compare [--methods NAMES] [--seeds 0 1 2] [--workers N] [--out results/frontier] [--work runs/compare]
  unified-rlhf data build [--out data] [--seed 0] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_list(args) -> int:
    from . import objectives

    print(f"{'method':24s} {'family':13s} {'data':10s} {'level':8s} paper")
    for obj in objectives.REGISTRY.values():
        print(f"{obj.name:24s} {obj.family:13s} {obj.data:10s} {obj.level:8s} {obj.paper}")
    return 0


def cmd_show(args) -> int:
    from . import objectives, symbolic, tables

    obj = objectives.get(args.name)
    labels = ("w+", "w-") if len(obj.closed_weights()) == 2 else ("w",)
    print(f"{obj.name}: {obj.paper}\n  family {obj.family}, data {obj.data}, level {obj.level}")
    print(f"  loss  L = {obj.sympy_loss()}")
    for label, w in zip(labels, obj.closed_weights()):
        print(f"  {label:5s} = {w}")
    for key, (value, source) in obj.defaults.items():
        print(f"  {key} = {value}  ({source}); allowed {obj.range_of(key)}")
    for key, value in obj.options.items():
        choices = obj.range_of(key)
        print(f"  option {key} = {value!r}" + (f"; one of {', '.join(map(repr, choices))}" if choices else ""))
    if obj.advantage is not None:
        print(f"  advantage estimator: {obj.advantage!r}")
    for hook in obj.hooks:
        print(f"  hook: {type(hook).__name__}: {(type(hook).__doc__ or '').strip().splitlines()[0]}")
    if obj.task_defaults:
        print(f"  on the book's task: {', '.join(f'{k}={v:g}' for k, v in obj.task_defaults.items())}")
    if obj.sweep is not None:
        print(f"  frontier sweep: {obj.sweep[0]} in {', '.join(f'{v:g}' for v in obj.sweep[1])}")
    if obj.same_as is not None:
        print(f"  frontier: the same loss as {obj.same_as}, trained once")
    comparison = tables.compare_with_seed(obj.name)
    if comparison.seed is not None:
        print(f"  source text: {', '.join(str(s) for s in comparison.seed)}"
              f"  [{'same' if comparison.same else 'same at defaults' if comparison.same_at_defaults else 'differs'}]")
    if comparison.note:
        print(f"  note: {comparison.note}")
    if obj.note:
        print(f"  {obj.note}")
    if args.latex:
        print(f"  LaTeX loss: {symbolic.to_latex(obj.sympy_loss())}")
    return 0


def cmd_verify(args) -> int:
    from . import objectives, verify
    from .custom import load_objective

    own = [load_objective(spec).name for spec in args.objective]
    names = list(objectives.REGISTRY) if args.all or not (args.names or own) else [*args.names, *own]
    for name in names:
        objectives.get(name)  # unknown names fail before any work, with the list of known ones
    print(f"{'method':24s} {'symbolic':20s} {'scalar':>9s} {'extreme':>9s} {'compiled':>9s} {'model':>9s}  result")
    failed = 0
    for name in names:
        r = verify.verify(name)
        failed += not r.passed
        print(f"{r.name:24s} {'/'.join(r.symbolic):20s} {r.scalar:9.1e} {r.extreme:9.1e} {r.compiled:9.1e} "
              f"{r.model:9.1e}  {'PASS' if r.passed else 'FAIL'}", flush=True)
        for reason in r.failures:
            print(f"    {reason}")
    logprob = verify.logprob_error()
    logprob_ok = logprob <= verify.SCALAR_TOLERANCE
    print(f"sequence log-probs, left and right padded, against one-at-a-time: {logprob:.1e}  "
          f"{'PASS' if logprob_ok else 'FAIL'}")
    print(f"tolerances: scalar {verify.SCALAR_TOLERANCE:g}, model {verify.MODEL_TOLERANCE:g} (relative, float64); "
          "extreme inputs also finite in float32 and bfloat16")
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed or not logprob_ok else 0


def _parse_value(text: str):
    """A JSON value (number, true/false, null, string, list, object), a float such as inf or nan, or the
    text itself. Types and ranges are checked by the config, which names the field."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _assignments(items: list[str], flag: str) -> dict:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects key=value, got '{item}'")
        values[key] = _parse_value(value)
    return values


def cmd_train(args) -> int:
    import json

    from .config import default_config, load_config
    from .trainer import train

    overrides = {k: v for k, v in {"max_steps": args.max_steps, "out": args.out, "model": args.model,
                                   "data_dir": args.data_dir, "seed": args.seed, "lr": args.lr,
                                   "batch_size": args.batch_size, "data_file": args.data_file,
                                   "data_split": args.data_split}.items() if v is not None}
    if args.data_column:  # FIELD=COLUMN; a column name stays a string, whatever it looks like
        overrides["data_columns"] = {}
        for item in args.data_column:
            field, sep, column = item.partition("=")
            if not sep:
                raise ValueError(f"--data-column expects FIELD=COLUMN, got '{item}'")
            overrides["data_columns"][field] = column
    hyperparameters = _assignments(args.hp, "--hp")
    overrides |= _assignments(args.set, "--set")
    method = args.method
    if args.objective:
        from .custom import load_objective

        obj = load_objective(args.objective)
        if method and method != obj.name:
            raise ValueError(f"--method {method} disagrees with the objective {args.objective} defines ('{obj.name}')")
        file, _, variable = args.objective.rpartition(":")
        method, overrides["objective"] = obj.name, f"{Path(file).expanduser().resolve()}:{variable}"
    saved = Path(args.out) / "config.json" if args.out else None
    if args.config or (args.resume and not method and saved is not None and saved.is_file()):
        config = load_config(args.config or saved, **overrides)  # --resume --out DIR: the run's own settings
        if method and method != config.method:
            raise ValueError(f"--method {method} disagrees with the config's method {config.method}")
        config.hyperparameters.update(hyperparameters)
        config.validate()
    elif method:
        config = default_config(method, hyperparameters=hyperparameters, **overrides)
    elif args.resume:
        raise FileNotFoundError(f"cannot resume: {saved} does not exist" if saved else
                                "--resume needs --out DIR (the run to continue)")
    else:
        raise ValueError("train needs --method NAME, --objective FILE.py:NAME or --config FILE")
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    print(f"run written to {config.out}")
    return 0


def cmd_evaluate(args) -> int:
    import json
    from pathlib import Path

    from .evaluate import evaluate_run

    result = evaluate_run(Path(args.run_dir), samples_per_prompt=args.samples, prompts=args.prompts)
    for sample in result.pop("samples", [])[:args.show]:
        print(f"  {sample['reward']:.2f}  {sample['prompt']} | {sample['completion']}")
    print(json.dumps(result, indent=2))
    return 0


def cmd_compare(args) -> int:
    from .compare import compare

    overrides = {k: v for k, v in {"max_steps": args.max_steps, "model": args.model, "data_dir": args.data_dir,
                                   "eval_prompts": args.eval_prompts}.items() if v is not None}
    overrides |= _assignments(args.set, "--set")
    compare(args.methods, out=args.out, work=args.work, seeds=tuple(args.seeds), workers=args.workers, **overrides)
    print(f"table and figures written to {args.out}")
    return 0


def cmd_data_build(args) -> int:
    import json

    from .build import build

    report = build(args.out, seed=args.seed, sft_steps=args.sft_steps, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    return 0


def _count(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unified-rlhf")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unified-rlhf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every objective with its family, data kind and paper").set_defaults(handler=cmd_list)
    show = sub.add_parser("show", help="one objective: loss, weights, defaults, source-text comparison")
    show.add_argument("name")
    show.add_argument("--latex", action="store_true", help="also print the loss as LaTeX")
    show.set_defaults(handler=cmd_show)
    verify = sub.add_parser("verify", help="symbolic + autograd verification, one row per method")
    verify.add_argument("names", nargs="*", help="objectives to verify (default: all)")
    verify.add_argument("--all", action="store_true", help="verify every registered objective")
    verify.add_argument("--objective", action="append", default=[], metavar="FILE.py:NAME",
                        help="also verify your own objective: variable NAME of FILE.py (repeatable)")
    verify.set_defaults(handler=cmd_verify)

    train = sub.add_parser("train", help="train a method on the book's task (or your data and model)")
    train.add_argument("--method", help="objective name (see `list`), or a weighted sum of them such as "
                                        "'dpo+0.2*sft' (compose.py)")
    train.add_argument("--objective", metavar="FILE.py:NAME",
                       help="your own objective: variable NAME of FILE.py (e.g. made by objective_from_sympy)")
    train.add_argument("--config", help="JSON or YAML file of TrainConfig fields")
    train.add_argument("--max-steps", type=_count(0))
    train.add_argument("--out", help="run directory (default runs/METHOD)")
    train.add_argument("--model", help="starting model: local directory or hub id (default data/reference)")
    train.add_argument("--data-dir")
    train.add_argument("--data-file", help="training data: a JSONL, JSON or Parquet file, a datasets directory "
                                           "(save_to_disk) or a hub id (default DATA_DIR/<kind>_train.jsonl)")
    train.add_argument("--data-split", help="the split of --data-file to train on (default train)")
    train.add_argument("--data-column", action="append", default=[], metavar="FIELD=COLUMN",
                       help="read a field from another column, e.g. --data-column chosen=response_good (repeatable)")
    train.add_argument("--seed", type=_count(0))
    train.add_argument("--lr", type=float)
    train.add_argument("--batch-size", type=_count(1))
    train.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                       help="objective hyperparameter, e.g. --hp beta=0.2 (repeatable)")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="any TrainConfig field, e.g. --set samples_per_prompt=8 --set kl_coef=0.02")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint (alone: with its saved settings; "
                            "only max_steps and the evaluation and checkpoint schedule may change)")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("evaluate", help="gold reward, KL and win rate of a trained run")
    evaluate.add_argument("run_dir", metavar="RUN", help="run directory written by `train`")
    evaluate.add_argument("--samples", type=_count(1), default=4, help="samples per prompt")
    evaluate.add_argument("--prompts", type=_count(1), default=200, help="number of held-out prompts")
    evaluate.add_argument("--show", type=_count(0), default=5, help="samples to print")
    evaluate.set_defaults(handler=cmd_evaluate)

    compare = sub.add_parser("compare", help="the reward-KL frontier: every method over its main knob")
    compare.add_argument("--methods", nargs="*", help="methods to sweep (default: every policy method)")
    compare.add_argument("--out", default="results/frontier", help="where the table and figures go")
    compare.add_argument("--work", default="runs/compare", help="run directories; finished points are reused")
    compare.add_argument("--seeds", nargs="+", type=_count(0), default=[0, 1, 2],
                         help="seeds of every point (default: 0 1 2)")
    compare.add_argument("--workers", type=_count(1), default=1,
                         help="points trained at once, in processes of one torch thread each (default 1)")
    compare.add_argument("--max-steps", type=_count(0), help="the same step budget for every point (default: STEPS)")
    compare.add_argument("--model", help="starting model: local directory or hub id (default data/reference)")
    compare.add_argument("--data-dir")
    compare.add_argument("--eval-prompts", type=_count(1), help="held-out prompts per evaluation (default 64)")
    compare.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                         help="any TrainConfig field for every point, e.g. --set eval_samples=4")
    compare.set_defaults(handler=cmd_compare)

    data = sub.add_parser("data", help="the book's data and reference model")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="regenerate data/ and data/reference from a seed")
    build.add_argument("--out", default="data")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--sft-steps", type=int, default=2000)
    build.add_argument("--overwrite", action="store_true", help="replace existing built data")
    build.set_defaults(handler=cmd_data_build)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt as error:  # Ctrl-C: what was kept and how to go on, in one line
        print(f"unified-rlhf {args.command}: {error or 'interrupted'}", file=sys.stderr)
        return 130
    except (KeyError, ValueError, TypeError, OSError) as error:
        # bad input from the user: one clear line, no traceback from deep inside a library
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        message = " ".join(str(message).split())  # one line, even for a library's multi-line message
        print(f"unified-rlhf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
