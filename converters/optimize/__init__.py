"""Optimization beyond post-training quantization (SPEC §8): pruning, quantization-aware
training, distillation and the sweep that compares them.

Modules that train (``training``, ``prune``, ``qat``, ``narrow``, ``distill``, ``jobs``) run in
the converter's child process only; the rest (``trainset``, ``plan``, ``provenance``,
``distill_cmd``, ``sweep``, ``sweep_report``) run in the ``edge-convert`` process, which never
imports TensorFlow.
"""
