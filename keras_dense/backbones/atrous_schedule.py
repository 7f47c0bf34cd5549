"""The atrous algorithm's bookkeeping: where a network stops downsampling and starts dilating.

keras.applications networks end at output stride 32. DeepLab's "atrous algorithm" removes the
stride of the last one or two downsamplings and dilates every later convolution by the stride
removed, so that the network computes the same features densely, at output stride 16 or 8.
A family builder calls `AtrousSchedule.downsample` wherever the original network downsamples
and dilates its later convolutions by `AtrousSchedule.rate`.
"""

from __future__ import annotations


class AtrousSchedule:
    """Tracks the output stride and the dilation rate while a backbone is built.

    Args:
        output_stride: The wanted output stride (8, 16 or 32 for ImageNet networks).
    """

    def __init__(self, output_stride: int):
        self.output_stride = output_stride
        self.stride = 1
        self.rate = 1

    def downsample(self, stride: int = 2) -> tuple[int, int]:
        """Called where the original network downsamples by `stride`.

        Returns:
            `(stride, rate)` for that layer: the original stride and rate 1 while the output
            stride is not reached; afterwards stride 1 and the current dilation rate, and the
            rate of all later layers is multiplied by `stride`.
        """
        if self.stride >= self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.stride *= stride
        return stride, self.rate
