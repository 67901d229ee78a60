"""DRAEM's two networks (Zavrtanik et al., ICCV 2021), written once as parts and assembled in loops, and the
scoring graph: the anomaly map and the image score as pure functions, and `Scorer`, which holds both networks,
the feature prior if any (model/feature_prior.py) and the score rule.

Parameter names and forward semantics are those of the authors' `model_unet.py`, so their released
checkpoints load with `strict=True`: `encoder.block{i}`, `decoder.up{i}` / `decoder.db{i}`, `fin_out`, ...
Each block is an `nn.Sequential` whose indices (0 conv, 1 BN, 2 ReLU, 3 conv, 4 BN, 5 ReLU) are part of the
parameter names, which is why the parts below are Sequentials and not custom modules.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.feature_prior import guided_sharpen


def double_conv(c_in, c_out, c_mid=None):
    """conv3x3-BN-ReLU twice; indices 0/1 and 3/4 hold the weights (original naming)."""
    c_mid = c_out if c_mid is None else c_mid
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, kernel_size=3, padding=1), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def up_conv(c_in, c_out):
    """2x bilinear upsampling then conv3x3-BN-ReLU; index 0 is the Upsample, 1/2 the weights."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def check_spatial_size(x, multiple=32):
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"input height and width must be multiples of {multiple} "
                         f"({multiple.bit_length() - 1} 2x poolings in the encoder), got {h}x{w}")


class _Encoder(nn.Module):
    """block1..blockN of double convs with channel multipliers `mults`, 2x max-pooling between them."""

    def __init__(self, in_channels, base_width, mults):
        super().__init__()
        chans = [in_channels] + [base_width * m for m in mults]
        self.n = len(mults)
        for i in range(self.n):
            self.add_module(f"block{i + 1}", double_conv(chans[i], chans[i + 1]))
            if i < self.n - 1:
                self.add_module(f"mp{i + 1}", nn.Sequential(nn.MaxPool2d(2)))

    def forward(self, x):
        check_spatial_size(x, 2 ** (self.n - 1))  # n - 1 poolings; the decoder must meet the skips exactly
        feats = []
        for i in range(1, self.n + 1):
            if i > 1:
                # The authors' discriminative encoder applies `mp3` where `mp2` belongs; both are parameter-free
                # MaxPool2d(2), so using the right one is numerically identical.
                x = getattr(self, f"mp{i - 1}")(x)
            x = getattr(self, f"block{i}")(x)
            feats.append(x)
        return feats  # shallow to deep: (B, C_i, H / 2**i, W / 2**i)


class EncoderReconstructive(_Encoder):
    def __init__(self, in_channels, base_width):
        super().__init__(in_channels, base_width, mults=(1, 2, 4, 8, 8))

    def forward(self, x):
        return super().forward(x)[-1]  # bottleneck only: no skip connections in the reconstructive net


class DecoderReconstructive(nn.Module):
    """up{i}: upsample + conv keeping width; db{i}: two convs, the second narrowing to the next level."""

    def __init__(self, base_width, out_channels=1):
        super().__init__()
        mults = (8, 4, 2, 1, 1)  # width before up1, after db1, ..., after db4
        for i in range(4):
            c, c_next = base_width * mults[i], base_width * mults[i + 1]
            self.add_module(f"up{i + 1}", up_conv(c, c))
            self.add_module(f"db{i + 1}", double_conv(c, c_next, c_mid=c))
        self.fin_out = nn.Sequential(nn.Conv2d(base_width, out_channels, kernel_size=3, padding=1))

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"db{i}")(getattr(self, f"up{i}")(x))
        return self.fin_out(x)


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder that restores the anomaly-free image; 69.0 M parameters at base_width=128.

    residual: the network predicts the correction to its input (x + decoder(encoder(x))) instead of the image
    itself; the same weights and names, so only the pair's config (`rec_residual`) tells the two apart. The
    authors' networks and pairs before it are not residual. With the decoder's last convolution starting at zero
    (DRAEM.init_weights) the reconstruction starts as the input itself: a 2-minute CPU run, which cannot teach an
    8x8 bottleneck a brushed texture, still shows the part (docs/training.md)."""

    def __init__(self, in_channels=3, out_channels=3, base_width=128, residual=False):
        super().__init__()
        self.encoder = EncoderReconstructive(in_channels, base_width)
        self.decoder = DecoderReconstructive(base_width, out_channels=out_channels)
        self.residual = bool(residual)

    def forward(self, x):
        out = self.decoder(self.encoder(x))  # (B, C, H, W)
        return x + out if self.residual else out


class EncoderDiscriminative(_Encoder):
    def __init__(self, in_channels, base_width):
        super().__init__(in_channels, base_width, mults=(1, 2, 4, 8, 8, 8))


class DecoderDiscriminative(nn.Module):
    """U-Net decoder: up_b/db_b at the bottleneck, then up1..up4/db1..db4, each fed cat(upsampled, skip)."""

    def __init__(self, base_width, out_channels=1):
        super().__init__()
        bw = base_width
        self.up_b = up_conv(bw * 8, bw * 8)
        self.db_b = double_conv(bw * (8 + 8), bw * 8)
        # (up_in, up_out, skip) channel multipliers for levels 1..4, matching b4, b3, b2, b1 of the encoder
        levels = ((8, 4, 8), (4, 2, 4), (2, 1, 2), (1, 1, 1))
        for i, (c_in, c_out, skip) in enumerate(levels, start=1):
            self.add_module(f"up{i}", up_conv(bw * c_in, bw * c_out))
            self.add_module(f"db{i}", double_conv(bw * (c_out + skip), bw * c_out))
        self.fin_out = nn.Sequential(nn.Conv2d(bw, out_channels, kernel_size=3, padding=1))

    def forward(self, b1, b2, b3, b4, b5, b6):
        x = self.db_b(torch.cat((self.up_b(b6), b5), dim=1))
        for i, skip in enumerate((b4, b3, b2, b1), start=1):
            x = getattr(self, f"db{i}")(torch.cat((getattr(self, f"up{i}")(x), skip), dim=1))
        return self.fin_out(x)


class DiscriminativeSubNetwork(nn.Module):
    """U-Net that segments the anomaly from cat(reconstruction, image); 28.4 M parameters at 64 channels.

    Returns raw logits (B, out_channels, H, W); channel 1 after softmax is the anomaly probability.
    """

    def __init__(self, in_channels=6, out_channels=2, base_channels=64):
        super().__init__()
        self.encoder_segment = EncoderDiscriminative(in_channels, base_channels)
        self.decoder_segment = DecoderDiscriminative(base_channels, out_channels=out_channels)

    def forward(self, x):
        """x (B, in_channels, H, W), H and W multiples of 32 -> logits (B, out_channels, H, W)."""
        b1, b2, b3, b4, b5, b6 = self.encoder_segment(x)  # six levels, 1x .. 1/32x; b1..b5 are the skips
        return self.decoder_segment(b1, b2, b3, b4, b5, b6)


def weights_init(m):
    """The authors' initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02) and zero bias."""
    name = m.__class__.__name__
    if "Conv" in name:
        m.weight.data.normal_(0.0, 0.02)
    elif "BatchNorm" in name:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


class DRAEM(nn.Module):
    """Both sub-networks; one module so DDP, AMP and ONNX export see a single graph.

    Parameter names stay under `reconstructive.` and `discriminative.` so each half can be saved in the
    authors' checkpoint format on its own.
    """

    def __init__(self, rec_base_width=128, seg_base_width=64, in_channels=3, rec_residual=False):
        super().__init__()
        self.reconstructive = ReconstructiveSubNetwork(in_channels, in_channels, base_width=rec_base_width,
                                                       residual=rec_residual)
        self.discriminative = DiscriminativeSubNetwork(2 * in_channels, 2, base_channels=seg_base_width)

    def init_weights(self, anomaly_prior=None):
        """The authors' init; with `anomaly_prior` p the segmentation head also starts at p(anomaly) = p.

        The focal-loss prior of RetinaNet (Lin et al. 2017): almost every pixel is normal, so starting at 0.5
        spends the first hundreds of steps only pushing the background down; short CPU runs cannot afford that.
        Logits (0, -log(1/p - 1)) give softmax p for the anomaly channel everywhere.
        """
        self.apply(weights_init)
        if self.reconstructive.residual:  # the correction starts at 0: the reconstruction is the input
            with torch.no_grad():
                last = self.reconstructive.decoder.fin_out[0]
                last.weight.zero_()
                last.bias.zero_()
        if anomaly_prior is not None:
            with torch.no_grad():
                bias = torch.tensor([0.0, -math.log(1 / anomaly_prior - 1)])
                self.discriminative.decoder_segment.fin_out[0].bias.copy_(bias)
        return self

    def forward(self, image):
        check_spatial_size(image, 32)
        rec = self.reconstructive(image)  # (B, 3, H, W)
        # The original feeds cat(reconstruction, image), in that order.
        logits = self.discriminative(torch.cat((rec, image), dim=1))  # (B, 2, H, W)
        return rec, logits


SCORE_KERNEL = 21  # the authors' evaluation: mean filter 21x21, stride 1, then max


def anomaly_map(seg_logits):
    """Anomaly probability per pixel: softmax channel 1 of the discriminative output.

    seg_logits: (B, 2, H, W) -> (B, H, W) in [0, 1].
    """
    return torch.softmax(seg_logits.float(), dim=1)[:, 1]


def score_kernel(size, scaled=True):
    """Mean-filter size for `size`-pixel images: the authors' 21 px at 256 px, kept at the same share of the image
    (odd, >= 3) when `scaled`; 21 otherwise. At 128 px: 11, so a small defect is not averaged away."""
    if not scaled:
        return SCORE_KERNEL
    return max(3, int(round(SCORE_KERNEL * size / 256 / 2)) * 2 + 1)


def image_score(amap, kernel=SCORE_KERNEL, top_fraction=0.0):
    """Image-level score. amap: (B, H, W) -> (B,).

    top_fraction 0 (the authors' rule): max of the map after a kernel x kernel mean filter (stride 1, zero
    padding), as `avg_pool2d(..., 21, stride=1, padding=10)` then max, so a single hot pixel does not make an
    image anomalous, but a defect of ~kernel x kernel px does.
    top_fraction > 0: the mean of the `top_fraction` hottest pixels of the raw map (at least one pixel); it does
    not depend on the defect's shape (a thin crack fills little of a square window).
    """
    if top_fraction > 0:
        flat = amap.flatten(1)  # (B, H*W)
        k = max(1, int(flat.shape[1] * top_fraction + 0.5))  # rounded; int() also when tracing for ONNX
        return flat.topk(k, dim=1).values.mean(dim=1)
    # A zero-padded box mean is separable: a k x 1 then a 1 x k mean equals the k x k one (to float rounding)
    # at 2k instead of k*k operations per pixel.
    pad = kernel // 2
    smoothed = F.avg_pool2d(amap[:, None], (kernel, 1), stride=1, padding=(pad, 0))  # (B, 1, H, W)
    smoothed = F.avg_pool2d(smoothed, (1, kernel), stride=1, padding=(0, pad))
    return smoothed.flatten(1).max(dim=1).values


def verdict(score, threshold):
    """The OK/NG rule: NG when the image score is above the threshold; "n/a" without a calibrated threshold."""
    return "n/a" if threshold is None else "NG" if score > threshold else "OK"


def with_prior(prior, amap, images=None, novelty=None):
    """DRAEM's anomaly map (B, H, W) fused with the feature prior's novelty of `images` (or the novelty maps
    (B, H, W) given, when they are computed once, as for the fixed validation set); DRAEM's map without a prior."""
    if prior is None:
        return amap
    return prior.fuse(prior.novelty(images.float()) if novelty is None else novelty, amap)


def autocast(device, dtype):
    """torch.autocast for `dtype` on `device`, or a no-op for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Scorer(nn.Module):
    """A DRAEM module, its feature prior if any, and its score rule: images (B, 3, H, W) in [0, 1] ->
    reconstruction (B, 3, H, W) in [0, 1] and anomaly map (B, H, W) in [0, 1], fp32; `score(maps)` -> (B,).

    kernel, top_fraction: `image_score`'s rule; amp_dtype: autocast of the networks (None: fp32). The map and the
    score are always computed in fp32. prior: a model.feature_prior.PriorFusion, whose fused map (DRAEM's map and
    the feature novelty, model/feature_prior.py `fuse`) replaces DRAEM's; None: DRAEM's map as it is.
    """

    def __init__(self, draem, kernel=SCORE_KERNEL, top_fraction=0.0, amp_dtype=None, prior=None, guide=0):
        super().__init__()
        self.draem, self.kernel, self.top_fraction, self.amp_dtype = draem, kernel, top_fraction, amp_dtype
        self.prior, self.guide = prior, int(guide)  # guide: radius of the output map's guided sharpening, 0: none

    @classmethod
    def from_config(cls, draem, config, amp_dtype=None, prior=None):
        """The rule a checkpoint's config records (the authors' pairs: 21 px, max of the filtered map)."""
        guide = 0 if config.get("scale", "square") == "square" else int(config.get("map_guide", 0))  # pairs before: 0
        return cls(draem, int(config.get("score_kernel", SCORE_KERNEL)),
                   float(config.get("score_top_fraction", 0.0)), amp_dtype, prior, guide)

    def forward(self, images):
        rec, amap = self.networks(images)
        return rec, with_prior(self.prior, amap, images)

    def networks(self, images):
        """DRAEM alone: reconstruction (B, 3, H, W) in [0, 1] and its anomaly map (B, H, W), fp32 (the softmax
        in fp32 whatever the networks' precision)."""
        with autocast(images.device, self.amp_dtype):
            rec, logits = self.draem(images)
        return rec.float().clamp(0, 1), anomaly_map(logits)

    def score(self, maps):
        return image_score(maps, self.kernel, self.top_fraction)

    @property
    def refines(self):
        """Whether the output map is reshaped by the prior's fine evidence (model/feature_prior.py FineEvidence)."""
        return self.prior is not None and self.prior.refines

    @property
    def sharpens(self):
        return bool(self.guide) or self.refines

    def sharpen(self, maps, images, fine=None, refine=True):
        """The maps (B, H, W) as shown and measured: reshaped by the prior's fine evidence (`fine`: its maps of the
        images, if computed already) where the pair has one and `refine`, then guided by the grey image (radius
        `guide`). The scores come from the maps before (docs/prior.md)."""
        if refine and self.prior is not None:  # PriorFusion.refine: the maps as they are without a fine evidence
            maps = self.prior.refine(maps, images, fine)
        return guided_sharpen(maps, images, self.guide) if self.guide else maps
