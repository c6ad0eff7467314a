"""How fast the frozen MiniLM encoder embeds on this machine's CPU, and what the ways to speed it
up cost in fidelity.

    python benchmarks/encoder_speed.py ../shared/datasets/banking77/test.csv --sentences 1000

Every option embeds the same sentences (the first ``--sentences`` texts of the CSV's ``text``
column) after one warm-up batch, and is compared with ``models.encoder.embed`` as it runs in
fedintent (passes of 8 texts of one token count, two torch threads, float32): sentences per
second (wall clock), CPU seconds per 1,000 sentences (all threads of this process), and the
lowest and mean cosine between its embedding and fedintent's for each sentence. The options:

* ``passes of 4`` and ``passes of 64``: other pass sizes, texts of one token count a pass;
* ``one thread``: ``torch.set_num_threads(1)``;
* ``int8 dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every linear layer;
* ``onnx float32`` and ``onnx int8``: ONNX Runtime on the exported encoder, if ``onnxruntime``
  and ``onnx`` are installed (they are not fedintent dependencies; the export time is reported
  separately, as every process that encodes would pay it).

docs/SCALING.md records the result; an option is worth adopting only at cosine >= 0.99 for every
sentence and a clear gain in CPU seconds, which is what a busy site pays.
"""

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.encoder import (
    ENCODE_ROWS,
    embed,
    load_encoder,
    mean_pool,
    packaged_minilm,
    token_passes,
)

Encode = Callable[[dict], torch.Tensor]
"""Token states of a tokenized batch (``input_ids``, ``attention_mask``, ``token_type_ids``)."""


def read_texts(path: Path, count: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    if len(texts) < count:
        raise SystemExit(f"{path}: {len(texts)} texts, fewer than --sentences {count}")
    return texts[:count]


def embed_with(texts: list[str], tokenizer, encode: Encode, rows: int) -> torch.Tensor:
    """``models.encoder.embed``'s loop (passes of ``rows`` texts of one token count, mean
    pooling, unit length) over another encoder or pass size."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for chunk, batch in token_passes(texts, tokenizer, rows):
        pooled = mean_pool(encode(batch), batch["attention_mask"])
        for i, row in zip(chunk.index[: chunk.real].tolist(), pooled[: chunk.real], strict=True):
            out[i] = row
    return torch.stack(out)


def timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """(output, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    output = run()
    return output, time.perf_counter() - wall, time.process_time() - cpu


def torch_encoder(model: nn.Module) -> Encode:
    @torch.inference_mode()
    def encode(batch: dict) -> torch.Tensor:
        return model(**batch).last_hidden_state
    return encode


class _TokenStates(nn.Module):
    """The encoder with positional inputs and one output, as the ONNX exporter takes it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def onnx_encoders(model: nn.Module, tokenizer, workdir: Path) -> tuple[dict[str, Encode], float]:
    """ONNX Runtime float32 and int8 sessions of ``model``, and the export's seconds; none if
    ONNX Runtime is not installed."""
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}, 0.0
    started = time.perf_counter()
    sample = tokenizer(["a sample sentence"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = workdir / "encoder.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    torch.onnx.export(_TokenStates(model), tuple(sample[name] for name in names), str(path),
                      input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes=axes, dynamo=False)
    export_seconds = time.perf_counter() - started
    quantize_dynamic(str(path), str(workdir / "encoder-int8.onnx"), weight_type=QuantType.QInt8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session_encoder(file: Path) -> Encode:
        session = onnxruntime.InferenceSession(str(file), options,
                                               providers=["CPUExecutionProvider"])

        def encode(batch: dict) -> torch.Tensor:
            feeds = {name: batch[name].numpy() for name in names}
            return torch.from_numpy(session.run(["last_hidden_state"], feeds)[0])
        return encode

    return ({"onnx float32": session_encoder(path),
             "onnx int8": session_encoder(workdir / "encoder-int8.onnx")}, export_seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="a CSV with a text column")
    parser.add_argument("--sentences", type=int, default=1000)
    args = parser.parse_args()
    if args.sentences < ENCODE_ROWS:
        parser.error(f"--sentences must be at least {ENCODE_ROWS}")
    texts = read_texts(args.csv, args.sentences)
    folder = packaged_minilm()
    tokenizer, model = load_encoder(folder)
    threads = torch.get_num_threads()
    embed(texts[:ENCODE_ROWS], folder)  # warm-up
    reference, wall, cpu = timed(lambda: embed(texts, folder))
    rows = [("fedintent today", wall, cpu, 1.0, 1.0)]

    def measure(name: str, encode: Encode, pass_rows: int = ENCODE_ROWS) -> None:
        embed_with(texts[:pass_rows], tokenizer, encode, pass_rows)  # warm-up
        output, wall, cpu = timed(lambda: embed_with(texts, tokenizer, encode, pass_rows))
        cosine = (output * reference).sum(dim=1)
        rows.append((name, wall, cpu, float(cosine.min()), float(cosine.mean())))
        print(f"{name}: {len(texts) / wall:.0f} sentences/s", file=sys.stderr, flush=True)

    plain = torch_encoder(model)
    measure("passes of 4", plain, 4)
    measure("passes of 64", plain, 64)
    torch.set_num_threads(1)
    measure("one thread", plain)
    torch.set_num_threads(threads)
    measure("int8 dynamic", torch_encoder(torch.ao.quantization.quantize_dynamic(
        model, {nn.Linear}, dtype=torch.qint8)))
    with tempfile.TemporaryDirectory() as tmp:
        encoders, export_seconds = onnx_encoders(model, tokenizer, Path(tmp))
        for name, encode in encoders.items():
            measure(name, encode)

    print(f"{len(texts)} sentences of {args.csv}, {threads} torch threads\n")
    print("| option | sentences/s | CPU s per 1,000 | cosine to today's: lowest, mean |")
    print("| --- | ---: | ---: | --- |")
    for name, wall, cpu, lowest, mean in rows:
        print(f"| {name} | {len(texts) / wall:.0f} | {1000 * cpu / len(texts):.2f} "
              f"| {lowest:.4f}, {mean:.4f} |")
    if encoders:
        print(f"\nONNX export: {export_seconds:.1f} s (paid by every process that encodes)")
    else:
        print("\nONNX Runtime is not installed: its rows are missing "
              "(pip install onnxruntime onnx to measure them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
