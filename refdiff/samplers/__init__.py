"""Reverse-process samplers: step functions, generator loops, guidance and editing."""

from refdiff.samplers.common import SampleStep, final
from refdiff.samplers.ddim import (ddim_alpha_bar_prev, ddim_invert_loop, ddim_invert_step, ddim_loop, ddim_sigma,
                                   ddim_step)
from refdiff.samplers.ddpm import ddpm_loop, ddpm_step
from refdiff.samplers.editing import inpaint_loop, repaint_moves, sdedit_loop, sdedit_start
from refdiff.samplers.guidance import classifier_free_guidance, classifier_guidance
from refdiff.samplers.karras import (dpmpp_2m_loop, dpmpp_2m_step, euler_ancestral_loop, euler_ancestral_step,
                                     euler_loop, euler_step, heun_loop, heun_step)
from refdiff.samplers.sigmas import (karras_denoiser, karras_grid, schedule_grid, sigma_to_t, t_to_sigma,
                                     to_sigma_scale, to_xt_scale)

__all__ = ["SampleStep", "final", "ddpm_step", "ddpm_loop", "ddim_step", "ddim_loop", "ddim_sigma",
           "ddim_alpha_bar_prev", "ddim_invert_step", "ddim_invert_loop", "classifier_free_guidance",
           "classifier_guidance",
           "inpaint_loop", "repaint_moves", "sdedit_loop", "sdedit_start",
           "euler_step", "euler_loop", "heun_step", "heun_loop", "euler_ancestral_step", "euler_ancestral_loop",
           "dpmpp_2m_step", "dpmpp_2m_loop", "karras_denoiser", "karras_grid", "schedule_grid",
           "sigma_to_t", "t_to_sigma", "to_sigma_scale", "to_xt_scale"]
