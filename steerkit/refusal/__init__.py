"""Refusal-direction steering (seed 003): the direction, the ladder's configs, three-way judges, the sweep.

`direction` (difference of means at a seen position, norm checks, controls, interventions), `config` (YAML
levels), `judges` (rule judge, degenerate text, agreement), `llm_judge` (the embedded model as grader), `sweep`
(every condition generated and judged), `report` (summary tables, paired tests, selection, figures).
"""
