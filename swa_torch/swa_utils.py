"""``torch.optim.swa_utils`` itself: the reference that ``swa_paddle.swa_utils`` mirrors."""

from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_avg_fn, update_bn

__all__ = ["AveragedModel", "SWALR", "get_ema_avg_fn", "update_bn"]
