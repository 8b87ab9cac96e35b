"""The papers' experiments in both frameworks: ResNet Figure 6 (``degradation``, on ``data``) and VGG's
3x3-stack argument (``receptive_field``)."""
