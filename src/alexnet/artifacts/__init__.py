"""The trained model as one artifact, and its files.

`trained` defines it (`TrainedModel`: the network, its validated metadata and config) and `load_trained`, the one
loader every command goes through; `checkpoint` reads and writes training checkpoints and release weights;
`program` and `program_guard` load the ``.pt2`` programs export and quantize write; `weights` is the registry of
published weights, with `caffe` converting BVLC's. Both training and inference stand on this layer.
"""
