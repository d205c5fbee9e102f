"""Minimal servers of one bundle expert on the serving engines compared by benchmarks/bench_serving_engines.py.

Each runs in its own virtual environment (the engines' pins conflict) with the repository on PYTHONPATH, and serves
``expert_0`` under the V2 contract of ask_the_expert.deploy.serve_contract (UINT8 images in, FP32 logits out) through
the bundle's onnxruntime session, as ``deploy serve`` does on PyTriton."""
