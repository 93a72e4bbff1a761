"""``python -m diffusers_memctl.cli.report``: rebuild a sweep's (or a study's) analysis, figures and REPORT.md.

python -m diffusers_memctl.cli.report runs/digits-sweep                       # from the run folders
python -m diffusers_memctl.cli.report runs/digits-sweep --export docs/x      # copy small results + report
python -m diffusers_memctl.cli.report docs/reproduction/digits --from_csv    # from an exported CSV only
"""

from __future__ import annotations

import argparse

from ..experiments.study import analyze_study_dir, export_study_results, is_study_dir, report_from_study_csv
from ..experiments.sweep import analyze_sweep_dir, export_sweep_results, report_from_results


def main(argv: list[str] | None = None) -> dict:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("folder", help="Sweep folder, or an exported results folder with --from_csv.")
    parser.add_argument("--export", default=None, help="Copy rows + loss histories here and write the report there.")
    parser.add_argument("--from_csv", action="store_true", help="Rebuild from sweep_results.csv and loss_histories/.")
    parser.add_argument("--num_train_timesteps", type=int, default=1000, help="T (with --from_csv).")
    args = parser.parse_args(argv)
    if is_study_dir(args.folder):
        if args.from_csv:
            result = report_from_study_csv(args.folder)
        elif args.export:
            result = export_study_results(args.folder, args.export)
        else:
            result = analyze_study_dir(args.folder)
    elif args.from_csv:
        result = report_from_results(args.folder, num_train_timesteps=args.num_train_timesteps)
    elif args.export:
        result = export_sweep_results(args.folder, args.export)
    else:
        result = analyze_sweep_dir(args.folder)
    print(f"{len(result['rows'])} rows; {len(result['figures'])} figures")
    return result


if __name__ == "__main__":
    main()
