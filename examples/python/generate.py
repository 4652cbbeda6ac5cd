"""Greedy generation with a paged KV cache and sigmoid attention, on the CPU in seconds.

A small causal language model (random weights: the point is the cache, not the text) prefills a
prompt with one sigmoid_attn_with_kvcache call per layer (the prompt's keys are appended to a
paged cache), then decodes one token per step, appending each new key/value. Every step is
checked against recomputing the whole sequence with one causal sigmoid_attn per layer (no cache):
the logits must agree and give the same token. The bias is the training-time b = -log(n) for a
training length n, the same at every step (not -log of the growing cache).

  python3 examples/python/generate.py [--tokens 48] [--batch 2] [--page-size 16]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

import flashsigmoid as fs


class Layer(torch.nn.Module):
    def __init__(self, dim, hq, hkv, head_dim):
        super().__init__()
        self.hq, self.hkv, self.d = hq, hkv, head_dim
        self.norm1, self.norm2 = torch.nn.RMSNorm(dim), torch.nn.RMSNorm(dim)
        self.wq = torch.nn.Linear(dim, hq * head_dim, bias=False)
        self.wkv = torch.nn.Linear(dim, 2 * hkv * head_dim, bias=False)
        self.wo = torch.nn.Linear(hq * head_dim, dim, bias=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def qkv(self, x):
        B, N, _ = x.shape
        h = self.norm1(x)
        q = self.wq(h).view(B, N, self.hq, self.d)
        k, v = self.wkv(h).view(B, N, 2, self.hkv, self.d).unbind(2)
        return q, k, v

    def finish(self, x, attn):
        x = x + self.wo(attn.flatten(2))
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=256, dim=128, layers=2, hq=4, hkv=2, head_dim=32, train_len=256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleList(Layer(dim, hq, hkv, head_dim) for _ in range(layers))
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.bias = -math.log(train_len)  # the sigmoid-attention bias the model was "trained" with
        self.alibi = torch.tensor([2.0 ** (-8 * (h + 1) / hq) for h in range(hq)])

    def forward_full(self, tokens):
        """Logits of every position, recomputing the whole sequence (no cache)."""
        x = self.embed(tokens)
        for layer in self.layers:
            q, k, v = layer.qkv(x)
            x = layer.finish(x, fs.sigmoid_attn(q, k, v, causal=True, bias=self.bias, alibi_slopes=self.alibi))
        return self.head(x)

    def forward_cached(self, tokens, cache, seqlens, block_table):
        """Logits of the new tokens; their keys/values are appended to each layer's paged cache."""
        x = self.embed(tokens)
        for layer, (k_cache, v_cache) in zip(self.layers, cache):
            q, k, v = layer.qkv(x)
            attn = fs.sigmoid_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=seqlens,
                                                block_table=block_table, causal=True, bias=self.bias,
                                                alibi_slopes=self.alibi)
            x = layer.finish(x, attn)
        return self.head(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=48, help="tokens to generate per sequence")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt", type=int, default=20, help="prompt length")
    p.add_argument("--page-size", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (no fork/join per op)
    model = TinyLM().eval()
    B, ps = args.batch, args.page_size
    max_len = args.prompt + args.tokens
    pages_per_seq = -(-max_len // ps)
    # The pages of all sequences in one pool, handed out in a random order (as a serving engine would).
    block_table = torch.randperm(B * pages_per_seq).to(torch.int32).view(B, pages_per_seq)
    first = model.layers[0]
    cache = [(torch.zeros(B * pages_per_seq, ps, first.hkv, first.d), torch.zeros(B * pages_per_seq, ps, first.hkv, first.d))
             for _ in model.layers]
    seqlens = torch.zeros(B, dtype=torch.int32)

    tokens = torch.randint(0, 256, (B, args.prompt))
    decode_time, worst = 0.0, 0.0
    with torch.no_grad():
        logits = model.forward_cached(tokens, cache, seqlens, block_table)[:, -1]  # prefill
        seqlens += args.prompt
        for step in range(args.tokens):
            # Check: the cached logits of the last position equal a full causal recomputation's.
            full = model.forward_full(tokens)[:, -1]
            err = ((logits - full).norm() / full.norm()).item()
            worst = max(worst, err)
            assert err < 1e-4, f"step {step}: cached vs full logits rel error {err}"
            nxt = logits.argmax(-1, keepdim=True)
            assert torch.equal(nxt, full.argmax(-1, keepdim=True)), f"step {step}: tokens differ"
            tokens = torch.cat([tokens, nxt], dim=1)
            if step + 1 == args.tokens:
                break
            t0 = time.perf_counter()
            logits = model.forward_cached(nxt, cache, seqlens, block_table)[:, -1]
            decode_time += time.perf_counter() - t0
            seqlens += 1
    steps = args.tokens - 1
    print(f"generated {args.tokens} tokens x {B} sequences with a paged cache (page size {ps}); "
          f"every step matched the full causal recomputation (worst logits rel error {worst:.1e})")
    print(f"cached decode: {B * steps / decode_time:.0f} tokens/s ({1e3 * decode_time / steps:.2f} ms per step)")
    print("first sequence:", tokens[0, args.prompt:].tolist())


if __name__ == "__main__":
    main()
