"""The peers: sentence-transformers (torch f32), ONNX Runtime (f32) and torch dynamic INT8,
each on one thread, on the same inputs as thaw-bench.

Usage: st_bench.py MODEL_DIR INPUTS_JSON  ->  prints one JSON line of timings.
The process start time comes from the caller (THAW_BENCH_T0, ns since the epoch), so the
cold start includes the interpreter and torch imports, as a user's function would pay.

- ONNX Runtime runs the model exported here with torch.onnx.export (opset 17, dynamic
  batch and sequence axes), one intra-op thread, every graph optimisation on. Tokenizing,
  padding to the longest, mean pooling and normalising are the same steps
  sentence-transformers takes, in numpy.
- torch INT8 is `torch.ao.quantization.quantize_dynamic` on every Linear layer
  (per-tensor activation scales, as torch does it).
- Quality: the lowest cosine between an engine's embedding and sentence-transformers'
  f32 embedding, over every input.
"""
import json, os, sys, tempfile, time

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
every = inputs["short"] + inputs["passages"] + [inputs["single"]]


def measure(encode):
    """Best-of rates for the two batches and the single-text p50, as thaw-bench does."""
    def rate(texts, reps):
        best = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            encode(texts)
            best = max(best, len(texts) / (time.perf_counter() - t))
        return best
    encode(inputs["short"])
    short = rate(inputs["short"], inputs["reps"])
    passages = rate(inputs["passages"], max(2, inputs["reps"] // 2))
    lat = []
    for _ in range(inputs["single_reps"]):
        t = time.perf_counter()
        encode([inputs["single"]])
        lat.append((time.perf_counter() - t) * 1e3)
    lat.sort()
    return {"short_per_s": short, "passages_per_s": passages, "single_p50_ms": lat[len(lat) // 2]}


def min_cosine(a, b):
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def st_encode(m):
    return lambda texts: m.encode(texts, batch_size=len(texts), normalize_embeddings=True)


out = {"cold_ms": cold_ms, "torch": torch.__version__}
out.update(measure(st_encode(model)))
reference = st_encode(model)(every)

# ONNX Runtime, f32.
try:
    import numpy as np
    import onnxruntime as ort
    tok = model.tokenizer
    bert = model[0].auto_model.eval().requires_grad_(False)

    class Hidden(torch.nn.Module):
        # Keyword arguments: BertModel's positional order changes between releases.
        def forward(self, input_ids, attention_mask, token_type_ids):
            return bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).last_hidden_state
    path = os.path.join(tempfile.mkdtemp(), "minilm.onnx")
    sample = tok(["hello world", "a longer second sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(Hidden(), (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
                          path, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def ort_encode(texts):
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
        feed = {n: enc[n].astype(np.int64) for n in names}
        hidden = sess.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    ort_out = measure(ort_encode)
    ort_out["min_cosine"] = min_cosine(ort_encode(every), reference)
    ort_out["version"] = ort.__version__
    out["ort"] = ort_out
except Exception as e:  # reported, not fatal: the other peers still count
    out["ort_error"] = repr(e)[:500]

# torch dynamic INT8 on every Linear.
try:
    q = SentenceTransformer(model_dir, device="cpu")
    q.max_seq_length = 256
    q = torch.ao.quantization.quantize_dynamic(q, {torch.nn.Linear}, dtype=torch.qint8)
    int8 = measure(st_encode(q))
    int8["min_cosine"] = min_cosine(st_encode(q)(every), reference)
    out["torch_int8"] = int8
except Exception as e:
    out["torch_int8_error"] = repr(e)[:500]

print(json.dumps(out))
