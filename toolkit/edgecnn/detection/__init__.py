"""Object detection on the training side: box datasets (COCO, YOLO), mAP, and the training loop."""
