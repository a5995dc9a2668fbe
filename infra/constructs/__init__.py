"""One construct per component; infra.stacks composes them."""
