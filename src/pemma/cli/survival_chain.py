"""``pemma survival chain``: the lesion-feature prognosis chain CT -> CT+PET -> CT+PET+EHR with the C-index gain
claims (a thin layer over :func:`pemma.api.survival_chain.survival_chain`).

::

    pemma survival chain --seg-ct runs/ct_unetr --seg-ctpet runs/pemma_lora --data data/phantom --out results/chain
"""

from __future__ import annotations

import argparse

from pemma.cli.options import add_device_flags, add_field_flag
from pemma.survival.chain_config import ChainConfig

#: ChainConfig fields given as plain flags (``grid`` takes several values)
FIELDS = ("folds", "seed", "overfit_gap", "test_fraction", "bootstrap", "suv_threshold", "suv_relative", "min_node_ml")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("chain", help="CT -> +PET -> +EHR on lesion features of the model's own segmentation "
                                       "(ridge Cox, penalty by inner CV), C-index gains with CIs")
    p.add_argument("--seg-ct", required=True,
                   help="segmentation run that segments CT input, or 'labels' (reference labels: an upper bound)")
    p.add_argument("--seg-ctpet", help="segmentation run that segments CT+PET input (default: --seg-ct on CT)")
    p.add_argument("--data", required=True, help="dataset folder (CT, PET, endpoint and clinical CSVs)")
    p.add_argument("--centres", help="comma-separated centres (default: all)")
    p.add_argument("--out", required=True, help="folder for features.csv and chain.json")
    p.add_argument("--no-ehr", action="store_true", help="stop at CT+PET (no clinical CSV needed)")
    p.add_argument("--grid", type=float, nargs="+", metavar="L2", help=ChainConfig.__dataclass_fields__["grid"]
                   .metadata["help"] + " (default 0.003 ... 10)")
    for name in FIELDS:
        add_field_flag(p, ChainConfig, name)
    p.add_argument("--numeric-column", action="append", metavar="NAME", help="numeric clinical column (repeat)")
    p.add_argument("--categorical-column", action="append", metavar="NAME", help="categorical clinical column (repeat)")
    p.add_argument("--endpoints", help="endpoint CSV (default: hecktor2022_endpoint_training.csv under --data)")
    p.add_argument("--clinical", help="clinical CSV (default: hecktor2022_clinical_info_*.csv under --data)")
    add_device_flags(p, amp=False)  # the survival stages run in fp32
    p.set_defaults(func=cmd_chain)


def cmd_chain(args: argparse.Namespace) -> int:
    from pemma.api.survival_chain import survival_chain

    res = survival_chain(args.seg_ct, args.data, args.out, seg_ctpet=args.seg_ctpet, centres=args.centres,
                         ehr=not args.no_ehr, numeric_column=args.numeric_column,
                         categorical_column=args.categorical_column, endpoints=args.endpoints, clinical=args.clinical,
                         device=args.device, grid=args.grid, **{k: getattr(args, k) for k in FIELDS})
    for s in res["stages"]:
        low, high = s["test_ci"] or (None, None)
        print(f"{s['stage']:<11} held-out C-index {_fmt(s['test_c_index'])} [95% CI {_fmt(low)}, {_fmt(high)}] "
              f"({s['n_test']} cases, {s['events_test']} relapses); inner-CV {_fmt(s['cv_c_index'])}, training "
              f"{_fmt(s['train_c_index'])}; l2 {s['l2']:g}, {s['n_features']} features"
              + ("; OVERFITTING" if s["overfitting"] else ""))
    verdict = {True: "holds", False: "does not hold", None: "not shown"}
    for c in res["claims"]:
        print(f"{c['id']}: {verdict[c['holds']]}: {c['detail']}")
    print(f"wrote {args.out}/chain.json and {args.out}/features.csv")
    return 0
