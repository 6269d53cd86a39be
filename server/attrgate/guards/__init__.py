"""Guards that run after the policy allowed a request: the SMS cost guard."""
