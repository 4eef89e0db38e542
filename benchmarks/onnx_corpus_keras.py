"""The corpus models made with TensorFlow/Keras + tf2onnx and scikit-learn + skl2onnx (tests/data/onnx).

Runs in its own environment, not igcli's: pip install tensorflow-cpu tf2onnx scikit-learn skl2onnx
    python benchmarks/onnx_corpus_keras.py tests/data/onnx
(Keras' exact GELU becomes an Erfc node in tf2onnx, which is no ONNX operator; the tanh form is used.)
"""
import os
import sys

import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
import keras
import tensorflow as tf
import tf2onnx
from keras import layers

tf.random.set_seed(0); np.random.seed(0)

def hard_swish(x):
    return x * tf.nn.relu6(x + 3.0) / 6.0

def se(x, ch):
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(max(ch // 4, 4), 1, activation="relu")(s)
    s = layers.Conv2D(ch, 1, activation="hard_sigmoid")(s)
    return layers.Multiply()([x, s])

def cnn():
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = layers.BatchNormalization()(x); x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.BatchNormalization()(x); x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, padding="valid")(x)
    x = layers.AveragePooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(5, activation="softmax")(x)
    return keras.Model(inp, x)

def mobilenet_like():
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization()(x); x = layers.Activation(hard_swish)(x)
    y = layers.Conv2D(16, 1, use_bias=False)(x); y = layers.BatchNormalization()(y); y = layers.Activation(hard_swish)(y)
    y = layers.DepthwiseConv2D(5, strides=2, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y); y = layers.Activation(hard_swish)(y)
    y = se(y, 16)
    y = layers.Conv2D(8, 1, use_bias=False)(y); y = layers.BatchNormalization()(y)
    z = layers.Conv2D(8, 1, activation="swish")(y)
    z = layers.Add()([y, z])
    z = layers.GlobalAveragePooling2D()(z)
    z = layers.Dense(16, activation=lambda t: keras.activations.gelu(t, approximate=True))(z)
    z = layers.LayerNormalization()(z)
    z = layers.Dense(4)(z)
    return keras.Model(inp, z)

def randomize_bn(model):
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape), rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])

for name, build, opset, nchw in (("keras_cnn_nhwc_opset9", cnn, 9, False), ("keras_mobilenet_nchw_opset13", mobilenet_like, 13, True)):
    model = build(); randomize_bn(model)
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="image"),)
    kwargs = {"inputs_as_nchw": ["image"]} if nchw else {}
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=f"{out}/{name}.onnx", **kwargs)
    print(name, "ok", os.path.getsize(f"{out}/{name}.onnx"))

import onnx
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
mlp = MLPClassifier(hidden_layer_sizes=(32, 16), activation="tanh", max_iter=300, random_state=0).fit(X, y)
onx = to_onnx(mlp, X[:1], options={id(mlp): {"zipmap": False}}, target_opset=15)
# keep only the probabilities output (igcli picks an output by name in another change)
keep = [o for o in onx.graph.output if o.name == "probabilities"]
del onx.graph.output[:]; onx.graph.output.extend(keep)
onx = onnx.utils.Extractor(onx).extract_model([i.name for i in onx.graph.input], ["probabilities"])
onnx.save(onx, f"{out}/sklearn_mlp_digits.onnx"); print("mlp ok", os.path.getsize(f"{out}/sklearn_mlp_digits.onnx"), mlp.score(X, y))
