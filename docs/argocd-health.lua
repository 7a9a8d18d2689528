-- Argo CD resource health check for pretraining.bert.dev/BertPretrainJob.
--
-- Install it in argocd-cm under the key
--   resource.customizations.health.pretraining.bert.dev_BertPretrainJob
-- (docs/argocd.md). Argo CD runs it with the live object as `obj`; it must return a
-- table with `status` (Healthy, Progressing, Degraded, Suspended, Unknown) and `message`.
-- Plain Lua 5.1, as Argo CD's interpreter speaks; tests/gitops/test_argocd_health.py
-- runs it against status fixtures.
--
--   no status yet, Pending, Preparing, Training, Exporting -> Progressing
--   Succeeded                                            -> Healthy
--   Failed                                               -> Degraded (the Failed condition)
--   Suspended (spec.runPolicy.suspend)                   -> Suspended

local hs = {}

local function find_condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "step 120/1000, loss 3.412" from the trainer's status.progress, or nil.
local function progress_text(status)
  local p = status.progress
  if p == nil or p.step == nil then
    return nil
  end
  local text = "step " .. string.format("%d", math.floor(p.step))
  if p.totalSteps ~= nil then
    text = text .. "/" .. string.format("%d", math.floor(p.totalSteps))
  end
  if p.loss ~= nil then
    text = text .. ", loss " .. string.format("%.4g", p.loss)
  end
  return text
end

-- Why a stage is waiting: a stage condition that is False with a reason
-- (Unschedulable, WaitingForAdmission, ImagePullFailure, ...).
local function waiting_text(status)
  for _, kind in ipairs({ "Admitted", "Prepared", "Trained", "Exported" }) do
    local c = find_condition(status, kind)
    if c ~= nil and c.status == "False" and c.reason ~= nil then
      if c.message ~= nil and c.message ~= "" then
        return c.reason .. ": " .. c.message
      end
      return c.reason
    end
  end
  return nil
end

local function with_detail(text, detail)
  if detail == nil then
    return text
  end
  return text .. ": " .. detail
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end

local phase = status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = with_detail("Succeeded", progress_text(status))
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local failed = find_condition(status, "Failed")
  if failed ~= nil and failed.message ~= nil and failed.message ~= "" then
    hs.message = with_detail(failed.reason or "Failed", failed.message)
  elseif failed ~= nil and failed.reason ~= nil then
    hs.message = failed.reason
  else
    hs.message = "Failed"
  end
  return hs
end

-- A spec edit the operator has not acted on yet (e.g. clearing suspend) is on its way.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. string.format("%d", math.floor(generation))
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  local suspended = find_condition(status, "Suspended")
  if suspended ~= nil and suspended.message ~= nil and suspended.message ~= "" then
    hs.message = suspended.message
  else
    hs.message = "Suspended by spec.runPolicy.suspend"
  end
  return hs
end

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = with_detail("Pending", waiting_text(status))
  return hs
end

if phase == "Preparing" or phase == "Training" or phase == "Exporting" then
  hs.status = "Progressing"
  hs.message = with_detail(phase, progress_text(status) or waiting_text(status))
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
