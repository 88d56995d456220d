import torch
import torch.nn.functional as F

from facekd.models.sharded_logits import sharded_kl_divergence


def test_one_process_equals_full_kl_and_its_gradient():
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(5, 11, generator=gen) * 4).requires_grad_()
    teacher = torch.randn(5, 11, generator=gen) * 4
    temperature = 3.0
    loss = sharded_kl_divergence(student, teacher, temperature)
    loss.backward()
    reference_student = student.detach().clone().requires_grad_()
    reference = F.kl_div(F.log_softmax(reference_student / temperature, 1),
                         F.softmax(teacher / temperature, 1), reduction="batchmean") * temperature ** 2
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    assert torch.allclose(student.grad, reference_student.grad, atol=1e-6)
    assert loss.item() > 0
