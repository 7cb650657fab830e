-- Argo CD health of a KServe InferenceService: Healthy only when the controller has seen the
-- current spec (observedGeneration) and reports Ready=True, so a PostSync hook never runs against
-- the previous model. A recorded model-load failure is Degraded; anything else is Progressing.
local hs = { status = "Progressing", message = "Waiting for the InferenceService to become Ready" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the controller to observe generation " .. obj.metadata.generation
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if condition.status == "True" then
      hs.status = "Healthy"
      hs.message = "InferenceService is Ready"
      return hs
    end
    if condition.message ~= nil then
      hs.message = condition.message
    end
  end
end
local model = obj.status.modelStatus
if model ~= nil and model.lastFailureInfo ~= nil then
  hs.status = "Degraded"
  hs.message = model.lastFailureInfo.message or model.lastFailureInfo.reason or "the model failed to load"
  return hs
end
if model ~= nil and model.transitionStatus == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = "the InferenceService spec is invalid"
end
return hs
