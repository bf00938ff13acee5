"""The peer: sentence-transformers on torch CPU, one thread, the same inputs as thaw-bench.

Usage: st_bench.py MODEL_DIR INPUTS_JSON  ->  prints one JSON line of timings.
The process start time comes from the caller (THAW_BENCH_T0, ns since the epoch), so the
cold start includes the interpreter and torch imports, as a user's function would pay.
"""
import json, os, sys, time

t0 = int(os.environ.get("THAW_BENCH_T0", time.time_ns()))
import torch  # noqa: E402
torch.set_num_threads(1)
from sentence_transformers import SentenceTransformer  # noqa: E402

model_dir, inputs_path = sys.argv[1], sys.argv[2]
inputs = json.load(open(inputs_path))
model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = 256
model.encode(["hello world"], normalize_embeddings=True)
cold_ms = (time.time_ns() - t0) / 1e6

def rate(texts, reps):
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        model.encode(texts, batch_size=len(texts), normalize_embeddings=True)
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best

short = rate(inputs["short"], inputs["reps"])
passages = rate(inputs["passages"], max(2, inputs["reps"] // 2))
lat = []
for _ in range(inputs["single_reps"]):
    t = time.perf_counter()
    model.encode([inputs["single"]], normalize_embeddings=True)
    lat.append((time.perf_counter() - t) * 1e3)
lat.sort()
print(json.dumps({"cold_ms": cold_ms, "short_per_s": short, "passages_per_s": passages,
                  "single_p50_ms": lat[len(lat) // 2], "torch": torch.__version__}))
