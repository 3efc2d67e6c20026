"""Command line: `unified-rlhf list | show NAME | verify [--all | NAMES]`."""

from __future__ import annotations

import argparse
import sys


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
        print(f"  {key} = {value}  ({source})")
    for key, value in obj.options.items():
        print(f"  option {key} = {value!r}")
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

    names = list(objectives.REGISTRY) if args.all or not args.names else args.names
    for name in names:
        objectives.get(name)  # unknown names fail before any work, with the list of known ones
    print(f"{'method':24s} {'symbolic':20s} {'scalar':>9s} {'extreme':>9s} {'compiled':>9s} {'model':>9s}  result")
    failed = 0
    for name in names:
        r = verify.verify(name)
        failed += not r.passed
        print(f"{r.name:24s} {'/'.join(r.symbolic):20s} {r.scalar:9.1e} {r.extreme:9.1e} {r.compiled:9.1e} "
              f"{r.model:9.1e}  {'PASS' if r.passed else 'FAIL'}", flush=True)
    logprob = verify.logprob_error()
    logprob_ok = logprob <= verify.SCALAR_TOLERANCE
    print(f"sequence log-probs, left and right padded, against one-at-a-time: {logprob:.1e}  "
          f"{'PASS' if logprob_ok else 'FAIL'}")
    print(f"tolerances: scalar {verify.SCALAR_TOLERANCE:g}, model {verify.MODEL_TOLERANCE:g} (relative, float64)")
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed or not logprob_ok else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unified-rlhf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every objective with its family, data kind and paper").set_defaults(run=cmd_list)
    show = sub.add_parser("show", help="one objective: loss, weights, defaults, source-text comparison")
    show.add_argument("name")
    show.add_argument("--latex", action="store_true", help="also print the loss as LaTeX")
    show.set_defaults(run=cmd_show)
    verify = sub.add_parser("verify", help="symbolic + autograd verification, one row per method")
    verify.add_argument("names", nargs="*", help="objectives to verify (default: all)")
    verify.add_argument("--all", action="store_true", help="verify every registered objective")
    verify.set_defaults(run=cmd_verify)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        # bad input from the user: one clear line, no traceback from deep inside a library
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"unified-rlhf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
