"""On a GPU machine with vLLM: write a fused-MoE tile file for this GPU into a folder, for
``perfmodel measure --backend vllm --moe-config-dir FOLDER`` (vLLM reads it before its own).

    python scripts/moe_tile_file.py FOLDER E N DTYPE --from-device NVIDIA_H100_80GB_HBM3
        # the table vLLM ships for another GPU, under this GPU's name
    python scripts/moe_tile_file.py FOLDER E N DTYPE --default K TOPK
        # vLLM's default rule (what it runs where it ships no table), at M = 1, 2, 4, ..., 65,536

E experts, N the expert's intermediate width on one GPU, K the hidden size, TOPK experts per
token, DTYPE vLLM's kernel dtype name (``fp8_w8a8``; ``none`` for bf16). Either way the file
holds vLLM's own numbers, read from the installed vLLM at run time; nothing is kept here.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("experts", type=int)
    parser.add_argument("width", type=int)
    parser.add_argument("dtype")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-device", help="vLLM's device name of the table to copy")
    source.add_argument("--default", nargs=2, type=int, metavar=("K", "TOPK"))
    args = parser.parse_args()

    from vllm.model_executor.layers.fused_moe import fused_moe as fm

    dtype = None if args.dtype == "none" else args.dtype
    here = fm.get_config_file_name(args.experts, args.width, dtype)
    args.folder.mkdir(parents=True, exist_ok=True)
    target = args.folder / here
    if args.from_device:
        device = here.split("device_name=")[1].split(",")[0].removesuffix(".json")
        source_file = Path(fm.__file__).parent / "configs" / here.replace(device, args.from_device)
        shutil.copyfile(source_file, target)
    else:
        k, top_k = args.default
        table = {str(2 ** i): fm.get_default_config(2 ** i, args.experts, args.width, k, top_k, dtype)
                 for i in range(17)}
        target.write_text(json.dumps(table, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
