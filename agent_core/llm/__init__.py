"""Model providers: one internal message/tool model, adapters per wire protocol."""
