// Hubflow's Azure resources for one environment, in one resource group:
//
//   az deployment group create -g rg-hubflow-<env> -f deploy/azure/main.bicep \
//       -p @deploy/azure/<env>.parameters.json [-p aksOidcIssuerUrl=<issuer>]
//
// - Event Hubs namespace (Entra ID only: local SAS auth disabled, as Hubflow
//   refuses connection strings anyway) with hubs `ingest` and `landed`, the
//   consumer group the partition consumers read `ingest` with ([pipeline]
//   consumer_group) and `transform` on `landed` (the notice listeners);
// - a StorageV2 account with hierarchical namespace (ADLS Gen2), no shared
//   key, no public blobs, containers raw, curated, state, dead-letters;
// - where the config says [transform] notices = "event_grid": an Event Grid
//   system topic on the account and a subscription that delivers
//   Microsoft.Storage.BlobCreated of the raw container to hub `landed`, with
//   the topic's own identity (the namespace takes no SAS keys);
// - the user-assigned identity Hubflow runs as, with exactly Azure Event Hubs
//   Data Sender and Data Receiver on the two hubs and Storage Blob Data
//   Contributor on the account; on AKS a federated credential for the
//   hubflow service account (workload identity);
// - diagnostic settings of the namespace, the account's blob service and the
//   topic to a Log Analytics workspace.
//
// Names must agree with deploy/config/<env>.toml (namespace, account, hubs,
// containers, consumer group, notices, credential kind):
// `python3 deploy/tools/deploycheck.py consistency` checks it
// (scripts/check-deploy.sh runs it).
targetScope = 'resourceGroup'

@description('dev, staging or production: used in resource names and tags.')
@allowed([
  'dev'
  'staging'
  'production'
])
param environment string

param location string = resourceGroup().location

@description('Event Hubs namespace; the config names it <name>.servicebus.windows.net.')
param eventHubsNamespaceName string

@description('Throughput units of the Standard namespace.')
@minValue(1)
@maxValue(40)
param eventHubsCapacity int = 1

@description('Partitions of both hubs (they must match; fixed once created).')
@minValue(1)
@maxValue(32)
param partitionCount int = 4

@description('Event retention of both hubs: how long a backlog can wait for a stopped pipeline.')
@minValue(1)
@maxValue(7)
param retentionDays int = 7

param ingestHubName string = 'ingest'
param landedHubName string = 'landed'

@description('[pipeline] consumer_group of the environment config.')
param ingestConsumerGroup string

@description('Storage account (3-24 lowercase letters and digits, globally unique); the config names it https://<name>.blob.core.windows.net.')
@minLength(3)
@maxLength(24)
param storageAccountName string

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

@description('Days a deleted blob or container can be restored.')
param softDeleteDays int = 7

@description('true where the config says [transform] notices = "event_grid".')
param eventGridNotices bool

@description('true where Hubflow runs on AKS (credential = "workload_identity"): creates the federated credential.')
param workloadIdentity bool

@description('OIDC issuer of the AKS cluster (az aks show --query oidcIssuerProfile.issuerUrl); needed when workloadIdentity is true.')
param aksOidcIssuerUrl string = ''

param serviceAccountNamespace string = 'hubflow'
param serviceAccountName string = 'hubflow'

param logAnalyticsRetentionDays int = 30

param tags object = {}

var allTags = union(tags, {
  app: 'hubflow'
  environment: environment
})

var rawContainer = 'raw'
var containerNames = [
  'raw'
  'curated'
  'state'
  'dead-letters'
]
var landedConsumerGroup = 'transform'

// Built-in role definitions (the same GUID in every tenant).
var roles = {
  eventHubsDataSender: '2b629674-e913-4c01-ae53-ef4638d8f975'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-hubflow-${environment}'
  location: location
  tags: allTags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logAnalyticsRetentionDays
  }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-hubflow-${environment}'
  location: location
  tags: allTags
}

resource federation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (workloadIdentity) {
  parent: identity
  name: 'aks-${serviceAccountNamespace}-${serviceAccountName}'
  properties: {
    issuer: aksOidcIssuerUrl
    subject: 'system:serviceaccount:${serviceAccountNamespace}:${serviceAccountName}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// ---------------------------------------------------------------- Event Hubs

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: eventHubsNamespaceName
  location: location
  tags: allTags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: eventHubsCapacity
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

resource ingestHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: ingestHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionDays
  }
}

resource landedHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: landedHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: retentionDays
  }
}

resource ingestGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: ingestHub
  name: ingestConsumerGroup
}

resource landedGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: landedHub
  name: landedConsumerGroup
}

// ------------------------------------------------------------------ Storage

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:The nodes reach the account from AKS and a VM over its public endpoint with Entra ID only (no shared key, no public blobs); put private endpoints and defaultAction Deny in front when the network is designed
  //checkov:skip=CKV_AZURE_59:Same as CKV_AZURE_35: public endpoint, Entra ID only, no anonymous access (allowBlobPublicAccess false)
  //checkov:skip=CKV_AZURE_206:storageSku is a parameter (ZRS by default, LRS in dev); checkov cannot resolve it
  //checkov:skip=CKV_AZURE_43:storageAccountName is a parameter (@minLength 3, @maxLength 24); checkov cannot resolve it
  name: storageAccountName
  location: location
  tags: allTags
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    isHnsEnabled: true
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in containerNames: {
  parent: blobService
  name: name
  properties: {
    publicAccess: 'None'
  }
}]

// ------------------------------------------------- Hubflow's identity: roles

resource ingestSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ingestHub.id, identity.id, roles.eventHubsDataSender)
  scope: ingestHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource ingestReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ingestHub.id, identity.id, roles.eventHubsDataReceiver)
  scope: ingestHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource landedSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(landedHub.id, identity.id, roles.eventHubsDataSender)
  scope: landedHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource landedReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(landedHub.id, identity.id, roles.eventHubsDataReceiver)
  scope: landedHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource blobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ------------------------------------- Event Grid: BlobCreated → hub landed

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (eventGridNotices) {
  name: 'evgt-hubflow-${environment}'
  location: location
  tags: allTags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The topic delivers with its own identity: the namespace takes no SAS keys.
resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (eventGridNotices) {
  name: guid(landedHub.id, topic.id, roles.eventHubsDataSender)
  scope: landedHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataSender)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource blobCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (eventGridNotices) {
  parent: topic
  name: 'raw-blob-created-to-landed'
  dependsOn: [
    topicSender
    containers
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${rawContainer}/'
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'EventHub'
        properties: {
          resourceId: landedHub.id
        }
      }
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

// ------------------------------------------------------ Diagnostic settings

resource namespaceDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: namespace
  properties: {
    workspaceId: workspace.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: workspace.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource topicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (eventGridNotices) {
  name: 'to-log-analytics'
  scope: topic
  properties: {
    workspaceId: workspace.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

// ------------------------------------------------------------------ Outputs

@description('azure.workload.identity/client-id of the service account (AKS), or HUBFLOW__*__AUTH__CLIENT_ID on a VM.')
output identityClientId string = identity.properties.clientId
output identityResourceId string = identity.id
output tenantId string = tenant().tenantId
output eventHubsNamespace string = '${namespace.name}.servicebus.windows.net'
output storageAccountUrl string = 'https://${storage.name}.blob.${az.environment().suffixes.storage}'
output logAnalyticsWorkspaceId string = workspace.id
