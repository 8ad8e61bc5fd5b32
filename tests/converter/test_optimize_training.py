"""The training helpers on small models, in child processes as in the converter: a narrower
student inherits the teacher's strongest filters exactly, and quantization-aware training starts
its activation ranges at the data's instead of tfmot's [-6, 6]."""

from __future__ import annotations

import os
import subprocess
import sys

# Half the filters of each hidden layer are dead (zero weights, so zero outputs): a half-width
# student that keeps the strongest filters is the same function as its teacher.
INHERIT = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras
from converters.optimize.inherit import inherit
from converters.optimize.narrow import narrower
L = keras.layers
keras.utils.set_random_seed(0)
teacher = keras.Sequential([keras.Input((12, 12, 1)), L.Conv2D(8, 3), L.BatchNormalization(),
                            L.ReLU(), L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(),
                            L.Flatten(), L.Dense(6, activation="relu"), L.Dense(3)])
x = np.random.default_rng(0).normal(size=(16, 12, 12, 1)).astype("float32")
dead = [1, 2, 5, 6]
conv1, bn, _, conv2, _, _, dense, _ = teacher.layers
k, b = conv1.get_weights(); k[..., dead] = 0; b[dead] = 0; conv1.set_weights([k, b])
g, beta, mean, var = bn.get_weights(); beta[dead] = 0; mean[dead] = 0
bn.set_weights([g, beta, mean, var])
k, b = conv2.get_weights(); k[..., dead] = 0; b[dead] = 0; conv2.set_weights([k, b])
k, b = dense.get_weights(); k[:, [0, 4, 5]] = 0; b[[0, 4, 5]] = 0; dense.set_weights([k, b])
student = narrower(teacher, 0.5)
why = inherit(student, teacher)
assert why is None, why
gap = float(np.max(np.abs(teacher.predict(x, verbose=0) - student.predict(x, verbose=0))))
print(student.count_params(), teacher.count_params(), gap)
sys.exit(0 if gap < 1e-4 else 1)
"""

RANGES = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tf_keras as k
from converters.optimize import qat
L = k.layers
k.utils.set_random_seed(0)
model = k.Sequential([k.Input((8, 8, 1)), L.Conv2D(4, 3), L.ReLU(), L.GlobalAveragePooling2D(),
                      L.Dense(3, activation="softmax")])
x = np.random.default_rng(0).uniform(0, 0.3, size=(256, 8, 8, 1)).astype("float32")
qat._moving_average_from(qat._ema)
quantized = qat.quantize(model, False)
def ranges():
    return {v.name: float(v.numpy()) for v in quantized.weights
            if v.name.endswith(("_min:0", "_max:0")) and "kernel" not in v.name
            and "quantize_layer" not in v.name}
before = ranges()
qat.calibrate_ranges(quantized, x)
after = ranges()
relu = [n for n in after if "re_lu" in n]
peak = float(np.max(k.Model(model.inputs, model.layers[1].output)(x)))
print(before, after, peak)
assert set(before.values()) == {-6.0, 6.0}, before
assert relu and all(after[n] == 0.0 for n in relu if n.endswith("_min:0")), after
assert all(0 < after[n] <= peak for n in relu if n.endswith("_max:0")), (after, peak)
"""


def run(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_a_narrower_student_inherits_the_teachers_strongest_filters() -> None:
    done = run(INHERIT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_qat_starts_its_activation_ranges_at_the_data_not_at_six() -> None:
    done = run(RANGES)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
