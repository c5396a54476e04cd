"""DETR/YOLOS set loss: Hungarian matching (scipy), then class CE, box L1 and GIoU."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from bavit.boxes import cxcywh_to_xyxy, generalized_iou


@dataclass
class SetLoss:
    """cost = -w_cls*p(class) + w_l1*L1 - w_giou*GIoU; the no-object class is down-weighted
    (most detection tokens match nothing)."""
    num_classes: int
    cost_class: float = 1.0
    w_l1: float = 5.0
    w_giou: float = 2.0
    no_object_weight: float = 0.1

    @torch.no_grad()
    def match(self, logits: torch.Tensor, boxes: torch.Tensor,
              targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        prob = logits.softmax(-1)
        out = []
        for p, b, t in zip(prob, boxes, targets):
            if len(t["labels"]) == 0:
                out.append((torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)))
                continue
            cost = (-self.cost_class * p[:, t["labels"]] + self.w_l1 * torch.cdist(b, t["boxes"], p=1)
                    - self.w_giou * generalized_iou(cxcywh_to_xyxy(b), cxcywh_to_xyxy(t["boxes"])))
            rows, cols = linear_sum_assignment(cost.numpy())
            out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return out

    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        matches = self.match(logits.detach(), boxes.detach(), targets)
        target_cls = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long)
        for i, ((rows, cols), t) in enumerate(zip(matches, targets)):
            target_cls[i, rows] = t["labels"][cols]
        weight = torch.ones(self.num_classes + 1)
        weight[-1] = self.no_object_weight
        loss_cls = F.cross_entropy(logits.transpose(1, 2), target_cls, weight=weight)
        src = torch.cat([boxes[i, r] for i, (r, _) in enumerate(matches)])
        tgt = torch.cat([t["boxes"][c] for (_, c), t in zip(matches, targets)])
        n = max(len(tgt), 1)
        loss_l1 = F.l1_loss(src, tgt, reduction="sum") / n
        loss_giou = (1 - torch.diag(generalized_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))).sum() / n
        total = loss_cls + self.w_l1 * loss_l1 + self.w_giou * loss_giou
        return {"loss": total, "cls": loss_cls.detach(), "l1": loss_l1.detach(), "giou": loss_giou.detach()}
