package controller

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// CacheOptions limits the manager's cache to what the controller reads:
// of all pods, only launcher pods are cached; of all EndpointSlices only
// those of L2 Services; of all PVCs only those of VMs (their disk
// templates' and containerDisks', labelled with the VM's name).
func CacheOptions() cache.Options {
	ofVM, err := labels.NewRequirement(v1alpha1.VMNameLabel, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant key: cannot fail
	}
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:                   {Label: labels.SelectorFromSet(labels.Set{v1alpha1.AppLabel: v1alpha1.AppLauncher})},
			&discoveryv1.EndpointSlice{}:    {Label: labels.SelectorFromSet(labels.Set{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy})},
			&corev1.PersistentVolumeClaim{}: {Label: labels.NewSelector().Add(*ofVM)},
		},
	}
}

// Setup registers the VM, VMI, migration, upload, snapshot, restore and
// L2 Service reconcilers and the metrics with mgr.
func Setup(mgr ctrl.Manager, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return fmt.Errorf("controller metrics: %w", err)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newPhaseCount(mgr.GetCache())); err != nil {
			return fmt.Errorf("controller metrics: %w", err)
		}
	}
	vmi := &VMIReconciler{
		metrics:   m,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
		Config:    &cfg,
	}
	if err := vmi.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up VMI controller: %w", err)
	}
	vm := &VMReconciler{
		metrics:   m,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
		Config:    &cfg,
	}
	if err := vm.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up VM controller: %w", err)
	}
	migration := &MigrationReconciler{
		metrics:   m,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
		Config:    &cfg,
	}
	if err := migration.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up migration controller: %w", err)
	}
	evacuation := &EvacuationReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("podvirt-controller"), Config: &cfg}
	if err := evacuation.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up evacuation controller: %w", err)
	}
	uploads, err := UploadCache(mgr)
	if err != nil {
		return fmt.Errorf("upload cache: %w", err)
	}
	up := &UploadReconciler{Client: mgr.GetClient(), Cache: uploads, Recorder: mgr.GetEventRecorder("podvirt-controller"), Config: &cfg}
	if err := up.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up upload controller: %w", err)
	}
	snapshots := &SnapshotReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("podvirt-controller")}
	if err := snapshots.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up snapshot controller: %w", err)
	}
	restores := &RestoreReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("podvirt-controller")}
	if err := restores.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up restore controller: %w", err)
	}
	l2 := &L2ServiceReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("podvirt-controller"),
	}
	if err := l2.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up L2 Service controller: %w", err)
	}
	return nil
}
