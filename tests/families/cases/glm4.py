"""GLM-4-0414 cases (norms on the attention and MLP outputs too): the GLM variants."""

from transformers import Glm4Config, Glm4ForCausalLM

from tests.families.cases.glm import glm_cases

CASES = glm_cases(Glm4Config, Glm4ForCausalLM)
