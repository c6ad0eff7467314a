"""benchmarks/encoder_speed.py compares every option with fedintent's own embedding: its loop,
given fedintent's encoder and batch size, must give exactly fedintent's embeddings, or every
cosine it reports would measure the loop as well as the option."""


import torch

from models.encoder import ENCODE_ROWS, embed, load_encoder, packaged_minilm

TEXTS = ["I lost my card", "when will my card arrive?", "top up failed", "hi",
         "my transfer to a friend has not arrived after three days, what happened?"] * 3


def test_the_benchmarks_loop_reproduces_fedintents_embeddings(benchmark_script) -> None:
    bench = benchmark_script("encoder_speed")
    folder = packaged_minilm()
    tokenizer, model = load_encoder(folder)
    reference = embed(TEXTS, folder)
    ours = bench.embed_with(TEXTS, tokenizer, bench.torch_encoder(model), ENCODE_ROWS)
    assert torch.equal(ours, reference)
    other_size = bench.embed_with(TEXTS, tokenizer, bench.torch_encoder(model), 4)
    assert torch.allclose(other_size, reference, atol=1e-5)
