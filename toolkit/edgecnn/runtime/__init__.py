"""edgecnn's torch-free runtime: numpy, OpenCV and ai-edge-litert / onnxruntime only.

    from edgecnn import runtime
    clf = runtime.load("model.tflite", threads=2)
    result = clf.predict(frame)          # frame: H×W×3 uint8 BGR, as OpenCV gives it
    print(result.label, result.score)
"""

from edgecnn.runtime.classifier import Classifier, Prediction, load

__all__ = ["Classifier", "Prediction", "load"]
