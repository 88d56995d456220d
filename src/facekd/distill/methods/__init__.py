"""One module (or package) per distillation method, each registered by `@register_distiller`.

`facekd.distill.registry.METHODS` imports them all the first time a method is looked up.
"""
