"""edgecnn's torch-free runtime: numpy, OpenCV and ai-edge-litert / onnxruntime only.

    from edgecnn import runtime
    model = runtime.load("model.tflite", threads=2)  # a Classifier or a Detector, as the file's card says
    result = model.predict(frame)       # a Classifier; frame: H×W×3 uint8 BGR, as OpenCV gives it
    print(result.label, result.score)
    for d in model.detect(frame):       # a Detector: boxes (x1, y1, x2, y2) in frame pixels
        print(d.label, d.score, d.box)
"""

from edgecnn.runtime.classifier import Classifier, Prediction
from edgecnn.runtime.detector import Detection, Detector
from edgecnn.runtime.tasks import load

__all__ = ["Classifier", "Detection", "Detector", "Prediction", "load"]
