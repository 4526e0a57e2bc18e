"""The product's own canonical URLs and codes, in one place.

Flags, Tasks, CareTeam roles, extensions and SubscriptionTopics the gateway
publishes all live under one canonical base.  The CodeSystems themselves are
published as files in ``profiles/`` (CodeSystem-*.json); tests check that every
code used here is defined there.
"""

from __future__ import annotations

BASE = "https://fhir.gateway.example"

# --- CodeSystems ----------------------------------------------------------------------------
FLAG_CODES = f"{BASE}/CodeSystem/safeguarding-flag"  # Flag.code
TASK_CODES = f"{BASE}/CodeSystem/safeguarding-task"  # Task.code
CARE_TEAM_ROLES = f"{BASE}/CodeSystem/care-team-role"  # CareTeam.participant.role
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"  # category "safety"
SNOMED = "http://snomed.info/sct"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS_CODE = "https://fhir.nhs.uk/Id/ods-organization-code"

# Flag.code values (FLAG_CODES)
FLAG_WNB = "was-not-brought"  # R1: missed appointments that matter
FLAG_DISGUISED_NON_ENGAGEMENT = "disguised-non-engagement"  # R1: repeated carer cancellations
FLAG_DISCHARGED_AFTER_WNB = "discharged-after-wnb"  # R4
FLAG_NO_CARE_PLAN = "no-integrated-care-plan"  # issue 6 rule
# Child markers derived from GP records / hospital diagnoses (gprecords/markers.py)
FLAG_COMPLEX_NEEDS = "complex-medical-needs"
FLAG_CHILD_PROTECTION_PLAN = "child-protection-plan"
FLAG_LOOKED_AFTER = "looked-after-child"
FLAG_SAFEGUARDING_CONCERN = "safeguarding-concern"
MARKER_FLAGS = (FLAG_COMPLEX_NEEDS, FLAG_CHILD_PROTECTION_PLAN, FLAG_LOOKED_AFTER, FLAG_SAFEGUARDING_CONCERN)

# Task.code values (TASK_CODES)
TASK_REVIEW_MISSED = "review-missed-appointments"  # R2
TASK_WNB_ENQUIRY = "wnb-enquiry"  # R5
TASK_DISCHARGE_REVIEW = "discharge-review"  # R4
TASK_COORDINATE = "coordinate-appointments"  # R6
TASK_REFERRAL_CONCERN = "referral-concern"  # issue 6: one per concern of a referral
TASK_CREATE_CARE_PLAN = "create-care-plan"  # issue 6 rule
# Task.input / Task.output types (TASK_CODES): what a rule attaches, what closes a Task
TASK_INPUT_EVIDENCE = "evidence"  # an Appointment / ServiceRequest the Task is about
TASK_INPUT_CARER_REASON = "carer-reported-reason"  # R5: recorded, never completes the Task
TASK_OUTPUT_OUTCOME = "outcome"  # a professional's outcome: needed to complete a review/enquiry

# CareTeam.participant.role (CARE_TEAM_ROLES)
ROLE_LEAD_PROFESSIONAL = "lead-professional"
ROLE_REGISTERED_GP = "registered-gp-practice"

# --- Extensions -----------------------------------------------------------------------------
EXT_RULE = f"{BASE}/StructureDefinition/raised-by-rule"  # valueCanonical/valueString "rule-id|version"
EXT_ESCALATION_LEVEL = f"{BASE}/StructureDefinition/escalation-level"  # valueInteger on Flag (R7)
EXT_CLOSURE_REASON = f"{BASE}/StructureDefinition/closure-reason"  # ServiceRequest (R4 has no statusReason)
CLOSURE_REASONS = f"{BASE}/CodeSystem/closure-reason"  # codes: non-attendance, treatment-complete, other
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
FLAG_PRIORITY = "http://hl7.org/fhir/StructureDefinition/flag-priority"

# --- Subscription topics (notify/topics.py; profiles/SubscriptionTopic-*.json) -------------
TOPIC_BASE = f"{BASE}/SubscriptionTopic"
TOPIC_WNB_FLAG = "wnb-flag"
TOPIC_CARE_PLAN_CHANGED = "care-plan-changed"
TOPIC_REFERRAL_CONCERN = "referral-concern"
TOPIC_DRIFT_ESCALATION = "drift-escalation"
TOPIC_APPOINTMENT_NOSHOW = "appointment-noshow"
TOPICS = (TOPIC_WNB_FLAG, TOPIC_CARE_PLAN_CHANGED, TOPIC_REFERRAL_CONCERN, TOPIC_DRIFT_ESCALATION,
          TOPIC_APPOINTMENT_NOSHOW)

# Subscription extensions of this product (notify/subscriptions.py; docs/subscriptions.md)
EXT_SUBSCRIPTION_SECRET = f"{BASE}/StructureDefinition/subscription-secret"  # valueString; write-only
EXT_SUBSCRIBER_ORGANIZATION = f"{BASE}/StructureDefinition/subscriber-organization"  # valueReference

# --- GP records (gprecords/) -----------------------------------------------------------------
# Source-scoped identifier added to every imported resource: system = SOURCE_RECORD_ID + "/" +
# a slug of the source, value = the resource's logical id in that source ("Type/id").  It makes a
# re-import find what the last one wrote, and resolves the source's references in later files.
SOURCE_RECORD_ID = f"{BASE}/Id/source-record"
MARKER_FLAG_ID = f"{BASE}/Id/marker-flag"  # identifier of a marker Flag: "<patient id>|<marker>"
EXT_DERIVED_FROM = f"{BASE}/StructureDefinition/derived-from"  # valueReference: the coded DNA entry
SDS_USER_ID = "https://fhir.nhs.uk/Id/sds-user-id"
GMP_NUMBER = "https://fhir.hl7.org.uk/Id/gmp-number"

# --- Referrals and care plans (referrals/, careplans/; docs/referrals-and-care-plans.md) -----
REFERRAL_CONCERN_ID = f"{BASE}/Id/referral-concern"  # Task.identifier: "<ServiceRequest id>|<concern key>"
ROLE_COMMISSIONED_SERVICE = "commissioned-service"  # CARE_TEAM_ROLES: a contracted/commissioned service
EXT_INFORMATION_EXCHANGE = f"{BASE}/StructureDefinition/information-exchange"  # CarePlan: how parties share
EXT_COMMISSIONED_DUTIES = f"{BASE}/StructureDefinition/commissioned-service-duties"  # CarePlan.activity
EXT_REVIEW_DATE = f"{BASE}/StructureDefinition/care-plan-review-date"  # CarePlan: valueDate

# The gateway itself, as the author of the Flags and Tasks its rules raise.
GATEWAY_DEVICE_ID = "safeguarding-gateway"
GATEWAY_DEVICE_REF = f"Device/{GATEWAY_DEVICE_ID}"
